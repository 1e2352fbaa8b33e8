"""What ``serve`` checks before it binds, and what a failed bind means: shared with
``check-config`` so that a config check-config approves is one serve starts with.

Every refusal is a PreflightError whose message is one line that names the cause
(the provider hint alone lists the providers, one per line); the CLI prints it and exits 2.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from proxy.accounting.usage_log import db_path
from proxy.http.cross_site import is_loopback
from proxy.service.discovery import enabled_providers, how_to_enable

from .config import Config

# `--port 0` asks the kernel for a free port (tests, one-off runs; the ready line prints
# it). A config file's port is the service's address, so it must be a real one.
PORT_RANGE = (1, 65535)


class PreflightError(Exception):
    """serve would refuse this config (or could not bind): the message says why."""


def check_port(port: int, *, from_cli: bool) -> None:
    low = 0 if from_cli else PORT_RANGE[0]
    if not low <= port <= PORT_RANGE[1]:
        where = "--port" if from_cli else "[server] port"
        also = " (0 on the command line picks a free one)" if not from_cli and port == 0 else ""
        raise PreflightError(f"{where} {port} is not a TCP port: use 1-65535{also}")


def check_state_paths(config: Config, environ: Mapping[str, str]) -> None:
    """The usage log's file (and its directory, where SQLite puts the WAL) must be writable."""
    if not config.usage.enabled:
        return
    path = Path(db_path(config.usage, environ))
    folder = path.parent
    fix = "set [usage] path to a writable file, or [usage] enabled = false"
    if not folder.is_dir():
        raise PreflightError(f"usage log {path}: directory {folder} does not exist; {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PreflightError(f"usage log {path}: directory {folder} is not writable; {fix}")
    if path.is_dir():
        raise PreflightError(f"usage log {path}: that is a directory, not a file; {fix}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise PreflightError(f"usage log {path}: the file is not writable; {fix}")


def preflight(
    config: Config,
    environ: Mapping[str, str],
    *,
    demo: bool,
    insecure_no_auth: bool,
    port_from_cli: bool = False,
) -> None:
    """Every check serve makes before it binds; raises PreflightError on the first failure."""
    server = config.server
    check_port(server.port, from_cli=port_from_cli)
    if not config.keys and not is_loopback(server.host) and not insecure_no_auth:
        raise PreflightError(
            f"refusing to serve {server.host!r} without client keys: anyone who can reach "
            "it could spend your provider credit. Add [[keys]] to the config "
            "(`model-router hash-key` prints a key's digest), bind 127.0.0.1, or pass "
            "--insecure-no-auth if something in front of the router authenticates."
        )
    if not demo and not enabled_providers(config, environ):
        raise PreflightError(how_to_enable(config))
    check_state_paths(config, environ)
    check_redis_url(config)


def check_redis_url(config: Config) -> None:
    """The options in redis_url's query are redis-py's to read: one it cannot use (``?db=x``,
    an unknown name, a TLS option on ``redis://``) is a config error now, not a traceback
    when the cluster link starts. Skipped without redis-py (serve then says to install it)."""
    if not config.cluster.enabled or importlib.util.find_spec("redis") is None:
        return
    from proxy.cluster.link import url_problem  # redis-py only when [cluster] asks for it

    if (problem := url_problem(config.cluster.redis_url)) is not None:
        raise PreflightError(f"config error: cluster.redis_url: {problem}")


def bind_error(what: str, host: str, port: int, exc: OSError) -> PreflightError:
    """One line for a listen socket that could not be opened, naming the cause."""
    where = f"{what} cannot listen on {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return PreflightError(f"{where}: {host!r} is not a known host name or address")
    if exc.errno == errno.EADDRINUSE:
        return PreflightError(
            f"{where}: the port is already in use (`ss -ltnp 'sport = :{port}'` shows by "
            "what); stop that program or choose another port"
        )
    if exc.errno == errno.EACCES:
        return PreflightError(
            f"{where}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return PreflightError(f"{where}: {host} is not an address of this machine")
    return PreflightError(f"{where}: {exc.strerror or exc}")
