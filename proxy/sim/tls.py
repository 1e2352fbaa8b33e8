"""TLS for the simulator: a throwaway CA made at start, a certificate for the loopback names,
and the CA file a client (the proxy's ``ca_file``, the SDK) trusts, so connection set-up costs
what it costs against a real provider: TCP, then a full TLS handshake.

The certificates come from ``trustme`` (a test and bench dependency, not a runtime one): the
simulator is a test fixture, and a CA is not something to hand-write.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

# The names a loopback client may dial.
NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class SimTLS:
    server: ssl.SSLContext  # the simulator's side
    ca_file: Path  # PEM of the CA that signed it: what a client must trust

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the simulator (and only the system store besides)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_sim_tls(directory: Path) -> SimTLS:
    """A fresh CA and a server certificate for ``NAMES``; the CA's PEM is written to
    ``directory/sim-ca.pem``. Nothing is downloaded: the keys are made here, in memory."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - the test and bench extras install it
        raise RuntimeError(
            "the simulator's TLS mode needs the 'trustme' package: pip install -e '.[test]'"
        ) from exc
    ca = trustme.CA()
    cert = ca.issue_cert(*NAMES)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "sim-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return SimTLS(server, ca_file)
