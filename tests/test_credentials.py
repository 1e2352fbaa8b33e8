"""Reading provider keys from $CREDENTIALS_DIRECTORY, as LoadCredential= lays them out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.service.credentials import read_credential

SECRET = "sk-test-3f9c1e0d7a"


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(SECRET.encode(), id="bare"),
        pytest.param(SECRET.encode() + b"\n", id="trailing-newline"),
        pytest.param(SECRET.encode() + b"\r\n", id="crlf"),
        pytest.param(b"  " + SECRET.encode() + b" \n\n", id="stray-whitespace"),
    ],
)
def test_returns_the_key_without_surrounding_whitespace(creds: Path, content: bytes) -> None:
    (creds / "openai_api_key").write_bytes(content)
    assert read_credential("openai_api_key") == SECRET


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\n", id="unit-default-newline"),
    ],
)
def test_an_empty_credential_counts_as_not_configured(creds: Path, content: bytes) -> None:
    (creds / "anthropic_api_key").write_bytes(content)
    assert read_credential("anthropic_api_key") is None


def test_missing_file_is_none(creds: Path) -> None:
    (creds / "openai_api_key").write_text(SECRET)
    assert read_credential("gemini_api_key") is None


def test_unset_credentials_directory_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_credential("openai_api_key") is None


def test_missing_credentials_directory_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "gone"))
    assert read_credential("openai_api_key") is None


@pytest.mark.parametrize("name", ["", ".", "..", "../openai_api_key", "a/b", "/etc/passwd"])
def test_names_that_could_leave_the_directory_are_refused(creds: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid credential name"):
        read_credential(name)


def test_undecodable_credential_error_quotes_no_byte_of_it(creds: Path) -> None:
    (creds / "deepseek_api_key").write_bytes(b"sk-\xff\xfe-secret")
    with pytest.raises(ValueError) as info:
        read_credential("deepseek_api_key")
    message = str(info.value)
    assert "deepseek_api_key" in message
    assert "secret" not in message
    assert "0xff" not in message
    assert info.value.__suppress_context__


def test_reading_logs_nothing_about_the_value(
    creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (creds / "openrouter_api_key").write_text(SECRET + "\n")
    with caplog.at_level(logging.DEBUG):
        assert read_credential("openrouter_api_key") == SECRET
        assert read_credential("missing") is None
    assert SECRET not in caplog.text
