"""The `model-router` executable as a user meets it: version and help, check-config agreeing
with serve, bind failures in one line, hash-key at a terminal and on a pipe, report's default
usage log. Every case runs the installed entry point as a subprocess."""

from __future__ import annotations

import argparse
import hashlib
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from proxy.__main__ import _parser

EXE = str(Path(sys.executable).parent / "model-router")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without provider credentials or a systemd state directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY")
        and not k.startswith("AWS_")
        and k not in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")
    }
    return {**env, **extra}


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, env=clean_env(**env), cwd=cwd, timeout=60
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 2, no traceback, the last stderr line is the message."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert "ready on" not in out.stdout
    return out.stderr.strip().splitlines()[-1]


def test_the_executable_is_installed() -> None:
    assert Path(EXE).is_file(), "pip install -e . puts model-router beside the interpreter"


def test_version_prints_the_installed_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"model-router {metadata.version('model-router')}"


def test_help_speaks_plain_words_not_a_docstring() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert "composition root" not in out.stdout and "``" not in out.stdout
    assert "model-router serve --demo" in out.stdout
    for command in ("serve", "check-config", "report", "hash-key", "sim-fault"):
        assert command in out.stdout


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_and_argument_has_help(command: str) -> None:
    parser = _subcommands()[command]
    assert parser.description, command
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "composition root" not in out.stdout
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (command, action.dest)
        # The first words of each help text reach the user.
        first = " ".join(action.help.split()[:3])
        assert first in " ".join(out.stdout.split()), (command, action.dest)


# --- check-config makes the checks serve makes ------------------------------------------


@pytest.mark.parametrize(
    "config, flags, needle",
    [
        pytest.param("[server]\nport = 9000\n", [], "OPENAI_API_KEY", id="no-credentials"),
        pytest.param(
            '[server]\nhost = "0.0.0.0"\n', ["--demo"], "without client keys", id="open-no-keys"
        ),
        pytest.param("[server]\nport = 99999\n", ["--demo"], "port 99999", id="port-too-big"),
        pytest.param("[server]\nport = 0\n", ["--demo"], "port 0", id="port-zero-in-a-file"),
        pytest.param(
            '[usage]\npath = "/nonexistent-dir/usage.db"\n',
            ["--demo"],
            "/nonexistent-dir does not exist",
            id="usage-dir-missing",
        ),
    ],
)
def test_check_config_refuses_what_serve_refuses_with_the_same_message(
    tmp_path: Path, config: str, flags: list[str], needle: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config)
    checked = run("check-config", *flags, str(path))
    served = run("serve", "--config", str(path), *flags)
    assert one_line_error(checked) == one_line_error(served)
    assert needle in checked.stderr
    assert checked.stderr == served.stderr  # every line, not only the last


def test_check_config_passes_what_serve_starts(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nport = 9000\n[usage]\npath = "{tmp_path}/usage.db"\n')
    demo = run("check-config", "--demo", str(path))
    assert demo.returncode == 0, demo.stderr
    assert "simulated with --demo" in demo.stdout and "claude-opus-4-5" in demo.stdout
    keyed = run("check-config", str(path), OPENAI_API_KEY="sk-test")
    assert keyed.returncode == 0, keyed.stderr
    assert "providers with credentials: openai" in keyed.stdout


def test_a_usage_log_path_that_is_a_directory_is_refused_by_both(tmp_path: Path) -> None:
    # (The permission check itself cannot be shown here: CI runs as root, who writes anywhere.)
    path = tmp_path / "config.toml"
    path.write_text(f'[usage]\npath = "{tmp_path}"\n')
    checked = run("check-config", "--demo", str(path))
    served = run("serve", "--demo", "--config", str(path))
    assert one_line_error(checked) == one_line_error(served)
    assert "that is a directory" in checked.stderr


# --- serve: a port it cannot have is one line ---------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_refuses_a_port_that_is_not_a_port(port: str, tmp_path: Path) -> None:
    line = one_line_error(run("serve", "--demo", "--port", port, STATE_DIRECTORY=str(tmp_path)))
    assert "argument --port" in line


def test_serve_on_a_taken_port_says_so_in_one_line(taken_port: int, tmp_path: Path) -> None:
    out = run("serve", "--demo", "--port", str(taken_port), STATE_DIRECTORY=str(tmp_path))
    line = one_line_error(out)
    assert f"127.0.0.1:{taken_port}" in line and "already in use" in line


def test_serve_with_the_simulator_port_taken_names_the_simulator(
    taken_port: int, tmp_path: Path
) -> None:
    out = run(
        "serve", "--demo", "--port", "0", "--sim-port", str(taken_port),
        STATE_DIRECTORY=str(tmp_path),
    )  # fmt: skip
    line = one_line_error(out)
    assert "simulator (--sim-port)" in line and "already in use" in line


def test_serve_on_an_address_it_does_not_have_says_so_in_one_line(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: the bind is refused, nothing listens.
    out = run(
        "serve", "--demo", "--insecure-no-auth", "--host", "192.0.2.1", "--port", "0",
        STATE_DIRECTORY=str(tmp_path),
    )  # fmt: skip
    assert "192.0.2.1 is not an address of this machine" in one_line_error(out)


# --- hash-key --------------------------------------------------------------------------------


def test_hash_key_reads_one_line_from_a_pipe() -> None:
    out = subprocess.run(
        [EXE, "hash-key"], input="sk-client-1\n", capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(b"sk-client-1").hexdigest()
    empty = subprocess.run([EXE, "hash-key"], input="", capture_output=True, text=True)
    assert empty.returncode == 2 and "no key given" in empty.stderr
    two = subprocess.run(
        [EXE, "hash-key"], input="sk-client-1\nsk-client-2\n", capture_output=True, text=True
    )
    assert two.returncode == 2 and "more than one line" in two.stderr and not two.stdout
    trailing = subprocess.run([EXE, "hash-key"], input=b"sk-client-1\n\n", capture_output=True)
    assert trailing.returncode == 0  # a blank line after the key is not a second key


def test_hash_key_does_not_wait_for_a_pipe_its_writer_keeps_open() -> None:
    # A script writes the key and waits for the digest before it closes stdin.
    proc = subprocess.Popen(
        [EXE, "hash-key"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("sk-client-1\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == hashlib.sha256(b"sk-client-1").hexdigest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_hash_key_at_a_terminal_prompts_without_echoing_the_key() -> None:
    secret = "sk-very-secret-42"
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execv(EXE, [EXE, "hash-key"])
    try:
        prompt = _read_until(fd, b"(not shown): ")
        assert b"client API key" in prompt, prompt
        os.write(fd, secret.encode() + b"\n")
        rest = _read_until(fd, hashlib.sha256(secret.encode()).hexdigest().encode())
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in rest
    assert secret.encode() not in prompt + rest  # the terminal never showed the key


# --- report's default usage log ---------------------------------------------------------------


def test_report_reads_the_state_directory_then_the_working_directory(tmp_path: Path) -> None:
    state, cwd = tmp_path / "state", tmp_path / "cwd"
    state.mkdir()
    cwd.mkdir()
    under_systemd = run("report", cwd=cwd, STATE_DIRECTORY=str(state))
    assert f"no usage log at {state}/model-router.db" in under_systemd.stderr
    if Path("/var/lib/model-router").is_dir():
        pytest.skip("this box has the service's state directory; report would read it")
    plain = run("report", cwd=cwd)
    assert "no usage log at ./model-router.db" in plain.stderr
