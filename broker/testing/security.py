"""Certificates and credentials for testing services against a broker with ``[auth]`` and
``[tls]``: the same rules as production, on 127.0.0.1.

`make_certificates` makes a throwaway CA with the `trustme` package (``pip install trustme``,
in broker's ``test`` extra), a server certificate for 127.0.0.1 and localhost, and a client
certificate per name (its CN and SAN are the name, so ``[tls] verify = true`` can map it to a
user). The pytest plugin's ``broker_certificates`` fixture and ``broker_tls`` marker use it.

Example::

    certs = make_certificates(tmp_path, clients=("orders",))
    config = Config(port=0, tls=certs.tls_config(verify=True))
    ...
    async with broker.connect(url, **certs.client_options("orders")) as client:
        ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

from ..config import TlsConfig

__all__ = ["TestCertificates", "make_certificates"]


@final
@dataclass(frozen=True)
class TestCertificates:
    """PEM files of a test CA, a server certificate and client certificates.

    Attributes:
        directory: Where the files are.
        ca_file: The CA's certificate: trusted by clients, and by the broker for clients.
        cert_file: The server's certificate chain and key (one file, for ``cert_file`` and
            ``key_file`` alike).
        clients: Each client name's certificate-and-key file.
        ca: The `trustme.CA`, to issue more (an expired one, a wrong CA's).
    """

    __test__ = False  # not a pytest test class, whatever its name

    directory: Path
    ca_file: str
    cert_file: str
    clients: dict[str, str] = field(default_factory=dict)
    ca: Any = None

    def tls_config(self, *, verify: bool = False) -> TlsConfig:
        """``[tls]`` for a broker using these files; `verify` requires client certificates."""
        return TlsConfig(
            cert_file=self.cert_file, key_file=self.cert_file, ca_file=self.ca_file, verify=verify
        )

    def client_options(self, name: str | None = None) -> dict[str, Any]:
        """`broker.connect` options trusting this CA, presenting `name`'s certificate if given."""
        options: dict[str, Any] = {"tls_ca_file": self.ca_file}
        if name is not None:
            options["tls_cert_file"] = self.clients[name]
        return options


def make_certificates(
    directory: str | os.PathLike[str], *, clients: tuple[str, ...] = ("client",)
) -> TestCertificates:
    """Make a CA, a server certificate (127.0.0.1, ::1, localhost) and one per client name.

    Raises:
        ModuleNotFoundError: trustme is not installed (``pip install trustme``).
    """
    import trustme

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    cert_file = folder / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    issued: dict[str, str] = {}
    for name in clients:
        path = folder / f"client-{name}.pem"
        ca.issue_cert(name, common_name=name).private_key_and_cert_chain_pem.write_to_path(
            str(path)
        )
        issued[name] = str(path)
    return TestCertificates(folder, str(ca_file), str(cert_file), issued, ca)
