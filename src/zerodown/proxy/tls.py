"""TLS termination on the embedded data plane: the server's SSLContext, the
certificate chosen by SNI, and the checks that make a bad certificate an
error at start, naming its key, instead of a handshake failure for clients.

TLS 1.2 and 1.3 only, with Mozilla's "intermediate" cipher list for 1.2
(1.3 suites are all AEAD; OpenSSL's defaults are kept). ALPN offers
http/1.1 alone: the embedded data plane speaks HTTP/1.1, and a client that
asked for h2 falls back to it (HAProxy and nginx offer h2).

Which listeners speak TLS: the data plane gets `[proxy] listen` then
`[proxy.tls] listen`, in that order, and the last len(tls.listen) distinct
addresses are the TLS ones, where their ports agree (`tls_fds`; port 0
agrees with any). Handed-over sockets keep that order (dataplane/sockets.py
groups them by address, in order), so a hot restart or a worker knows them
without being told again.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from zerodown.errors import ConfigError, os_reason
from zerodown.proxy.settings import TlsSettings

# https://ssl-config.mozilla.org/guidelines/5.7.json, "intermediate": forward
# secrecy and AEAD only. Applies to TLS 1.2; TLS 1.3 has its own (all AEAD).
INTERMEDIATE_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# TLS 1.3 suites of Mozilla "intermediate", for HAProxy and nginx (the embedded
# proxy keeps OpenSSL's, the same three).
TLS13_CIPHERSUITES: Final = (
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
ALPN: Final = ("http/1.1",)
# Let's Encrypt renews 30 days ahead: a certificate this close to its end
# was not renewed, and start and SIGHUP say so.
EXPIRY_WARNING: Final = datetime.timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Certificate:
    """One (cert, key) pair, read and checked: the names it serves and when it expires."""

    cert: str
    key: str
    names: tuple[str, ...]  # DNS names of the leaf, lower case ("*.example.com" kept)
    not_after: datetime.datetime


def cert_key_name(index: int, part: str) -> str:
    """The config key of the index-th (cert, key) pair of TlsSettings.certs."""
    return f"proxy.tls.{part}" if index == 0 else f"proxy.tls.certs[{index - 1}].{part}"


def check_pair(index: int, cert: str, key: str, now: datetime.datetime) -> Certificate:
    """Read the index-th pair of TlsSettings.certs; ConfigError names its key and why
    (unreadable, not PEM, key not matching the certificate, expired or not yet valid)."""
    cert_key, key_key = cert_key_name(index, "cert"), cert_key_name(index, "key")
    leaf = _leaf(_read(cert, cert_key), cert, cert_key)
    private = _private_key(_read(key, key_key), key, key_key)
    if _public(private.public_key()) != _public(leaf.public_key()):
        raise ConfigError(f"{key} does not match the certificate {cert}", key=key_key)
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        raise ConfigError(f"{cert} expired on {not_after:%Y-%m-%d %H:%M} UTC", key=cert_key)
    if not_before > now:
        reason = f"{cert} is not valid before {not_before:%Y-%m-%d %H:%M} UTC"
        raise ConfigError(reason, key=cert_key)
    return Certificate(cert, key, _names(leaf), not_after)


def expiring(certificates: Sequence[Certificate], now: datetime.datetime) -> list[str]:
    """A warning for each certificate that expires within EXPIRY_WARNING."""
    return [
        f"{c.cert} expires on {c.not_after:%Y-%m-%d %H:%M} UTC, in {(c.not_after - now).days} days"
        for c in certificates
        if c.not_after - now < EXPIRY_WARNING
    ]


def check_all(settings: TlsSettings, now: datetime.datetime | None = None) -> list[Certificate]:
    now = now or datetime.datetime.now(datetime.UTC)
    return [check_pair(i, cert, key, now) for i, (cert, key) in enumerate(settings.certs)]


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {os_reason(exc)}", key=key) from None


def _leaf(data: bytes, path: str, key: str) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise ConfigError(f"{path} holds no PEM certificate", key=key)
    return chain[0]  # the full chain starts with the server's own


def _private_key(data: bytes, path: str, key: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{path} is encrypted: give an unencrypted key", key=key) from None
    except Exception as exc:  # noqa: BLE001 - cryptography's parse errors vary
        raise ConfigError(f"{path} holds no PEM private key ({exc})", key=key) from None


def _public(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(name.lower().rstrip(".") for name in names)


# -- choosing a certificate by SNI (pure) -------------------------------------


def pick(names: Sequence[tuple[str, ...]], server_name: str | None) -> int:
    """Which certificate answers `server_name`: an exact name first, then a
    wildcard one label deep (RFC 6125 §6.4.3), else the first (the default)."""
    if not server_name:
        return 0
    wanted = server_name.lower().rstrip(".")
    for index, served in enumerate(names):
        if wanted in served:
            return index
    _, dot, parent = wanted.partition(".")
    if dot:
        for index, served in enumerate(names):
            if f"*.{parent}" in served:
                return index
    return 0


# -- contexts ------------------------------------------------------------------


def server_context(certificates: Sequence[Certificate]) -> ssl.SSLContext:
    """The context a TLS listener offers: the first certificate, or another by SNI."""
    contexts = [_one_context(i, c) for i, c in enumerate(certificates)]
    names = [c.names for c in certificates]
    default = contexts[0]
    if len(contexts) > 1:

        def choose(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            index = pick(names, server_name)
            if index:
                sslobj.context = contexts[index]

        default.sni_callback = choose
    return default


def _one_context(index: int, certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.set_alpn_protocols(list(ALPN))
    # No session tickets: their keys would differ per worker, and would make a
    # reloaded certificate's old keys live on; sessions by id stay per worker.
    context.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certificate.cert, certificate.key)
    except (OSError, ssl.SSLError) as exc:  # checked already: a file changed in between
        key = cert_key_name(index, "cert")
        raise ConfigError(f"cannot load {certificate.cert}: {exc}", key=key) from None
    return context


def load(settings: TlsSettings) -> ssl.SSLContext:
    """Check every certificate, then build the context; ConfigError names the key."""
    return server_context(check_all(settings))


def tls_fds(sockets: Sequence[socket.socket], settings: TlsSettings | None) -> set[int]:
    """The file descriptors of the TLS listeners among `sockets` (see the module doc)."""
    if settings is None or not settings.listen:
        return set()
    order: list[tuple[str, int]] = []
    for sock in sockets:
        address = sock.getsockname()[:2]
        if address not in order:
            order.append(address)
    paired = zip(order[-len(settings.listen) :], settings.listen, strict=False)
    # The port too must agree (unless the config asked for any, port 0): sockets
    # handed over by a generation that had no TLS listeners are no TLS ones.
    tls = {bound for bound, wanted in paired if _port(wanted) in (0, bound[1])}
    return {sock.fileno() for sock in sockets if sock.getsockname()[:2] in tls}


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])
