"""`[proxy.tls]`: TLS termination, its listeners and certificates.

The files are only named here; they are read and checked (readable, key
matching the certificate, not expired) when the data plane starts, by
proxy/tls.py, so that `zerodown status` needs no access to a private key.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from zerodown.config.fields import Listener, NotEmpty, Table
from zerodown.proxy.settings import TlsSettings


class CertConfig(Table):
    """One `[[proxy.tls.certs]]`: another certificate, offered to clients that ask for its names."""

    cert: str  # PEM, the full chain: the server's certificate first
    key: str  # PEM, not encrypted


class TlsConfig(Table):
    listen: Annotated[tuple[Listener, ...], NotEmpty] = Field(strict=False)
    cert: str
    key: str
    certs: tuple[CertConfig, ...] = Field(default=(), strict=False)
    redirect_http: bool = False

    def settings(self) -> TlsSettings:
        pairs = ((self.cert, self.key), *((c.cert, c.key) for c in self.certs))
        return TlsSettings(listen=self.listen, certs=pairs, redirect_http=self.redirect_http)
