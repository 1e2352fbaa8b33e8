"""Secrets handed over by systemd: one file per credential in $CREDENTIALS_DIRECTORY.

See LoadCredential= in systemd/model-router.service. Values are never logged.
"""

from __future__ import annotations

import os


def read_credential(name: str) -> str | None:
    """The credential's text with surrounding whitespace removed, or None if absent.

    Absent means: no $CREDENTIALS_DIRECTORY, no such file, or an empty file (the
    unit's SetCredential= default for a provider the operator did not configure).
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid credential name {name!r}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        # `from None`: the decode error's message quotes a byte of the secret.
        raise ValueError(f"credential {name!r} is not UTF-8 text") from None
    return text.strip() or None
