"""Certificates a test makes itself (trustme), written to files as zerodown
reads them, and TLS clients that trust them and say what they got."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from harness import DEADLINE, Response, read_response


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


def write_cert(
    ca: trustme.CA,
    directory: Path,
    name: str,
    *identities: str,
    not_after: datetime.datetime | None = None,
) -> CertFiles:
    """A leaf for `identities` (default: `name` and 127.0.0.1): its chain in
    `name`.pem, its key in `name`.key."""
    leaf = ca.issue_cert(*(identities or (name, "127.0.0.1")), not_after=not_after)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return CertFiles(str(cert), str(key))


def client_context(
    ca: trustme.CA,
    *,
    version: ssl.TLSVersion | None = None,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    """A client that trusts `ca`; `version` pins both ends of the range."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL will not even offer it
        with warnings.catch_warnings():  # TLSv1_1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@dataclass
class TlsClient:
    """One TLS connection, kept alive across requests."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(
        cls, port: int, context: ssl.SSLContext, server_name: str = "example.test"
    ) -> TlsClient:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=server_name
            )
        return cls(reader, writer)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        found = self.writer.get_extra_info("ssl_object")
        assert isinstance(found, ssl.SSLObject)
        return found

    @property
    def version(self) -> str | None:
        return self.ssl_object.version()

    @property
    def peer_names(self) -> list[str]:
        """The DNS names of the certificate the server sent."""
        der = self.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        return list(san.value.get_values_for_type(x509.DNSName))

    async def get(self, path: str = "/", host: str = "example.test") -> Response:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        async with asyncio.timeout(DEADLINE):
            return await read_response(self.reader)

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
