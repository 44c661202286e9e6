"""`[proxy.tls]` on HAProxy: the bind options, the global TLS defaults, the
redirect of plain HTTP, and the combined certificate files HAProxy reads.

HAProxy wants a certificate's chain and key in one PEM file: each pair of
`[proxy.tls]` is written as state_dir/tls/N.pem (mode 0600: it holds the
key), and the bind names them in order with one `crt` each; the first is
the default, the others are chosen by SNI from their names (HAProxy reads
them from the certificates, as the embedded proxy does).
"""

from __future__ import annotations

import os
from pathlib import Path

from zerodown.proxy.settings import TlsSettings
from zerodown.proxy.tls import INTERMEDIATE_CIPHERS, TLS13_CIPHERSUITES


def cert_files(state_dir: Path, tls: TlsSettings) -> list[Path]:
    """Where the combined PEM of each pair goes, in TlsSettings.certs order."""
    return [state_dir / "tls" / f"{index}.pem" for index in range(len(tls.certs))]


def write_cert_files(state_dir: Path, tls: TlsSettings) -> None:
    """Chain then key, per pair, readable by this user only (the key is in it)."""
    for (cert, key), path in zip(tls.certs, cert_files(state_dir, tls), strict=True):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(key).read_bytes()
        temporary = path.with_suffix(".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(text)
        os.replace(temporary, path)


def global_lines(tls: TlsSettings | None) -> list[str]:
    if tls is None:
        return []
    return [
        f"ssl-default-bind-ciphers {INTERMEDIATE_CIPHERS}",
        f"ssl-default-bind-ciphersuites {TLS13_CIPHERSUITES}",
        # No tickets: as the embedded proxy, so a reloaded key is not outlived.
        "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
    ]


def bind_options(state_dir: Path, tls: TlsSettings) -> str:
    crts = " ".join(f"crt {path}" for path in cert_files(state_dir, tls))
    return f" ssl {crts} alpn h2,http/1.1 ssl-min-ver TLSv1.2"


def is_tls(address: str, tls: TlsSettings | None) -> bool:
    return tls is not None and address in tls.listen


def redirect_lines(address: str, tls: TlsSettings | None) -> list[str]:
    """On a plain listener with `redirect_http`: 308 to the first TLS listener's
    port, same host and path. A `location`, not `redirect scheme https`: that
    one keeps the Host's port, which is the plain listener's."""
    if tls is None or not tls.redirect_http or is_tls(address, tls):
        return []
    port = tls.listen[0].rpartition(":")[2]
    shown = "" if port == "443" else f":{port}"
    return [
        f"http-request redirect location https://%[var(txn.host)]{shown}%[capture.req.uri] code 308"
    ]
