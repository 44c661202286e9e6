"""The PROXY protocol header (HAProxy's proxy-protocol.txt, v1 and v2), parsed. Pure.

An L4 load balancer in front of the proxy (AWS NLB, HAProxy in `mode tcp`,
a cloud TCP balancer) cannot add X-Forwarded-For: it sends the client's
address in a header of its own before the first byte of the connection,
before the TLS handshake too. `parse` reads it from the bytes that
arrived so far; the caller (accept_proxy.py) consumes exactly `length`
bytes and hands the rest of the stream to HTTP or TLS untouched.

Strict, as a header that passed through a proxy we trust must be well
formed: any byte out of place is ProxyHeaderError, never a guess, and the
connection is closed. A header longer than MAX_HEADER is refused, so a
peer cannot make us wait for or hold an endless one.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_HEADER", "ProxyHeader", "ProxyHeaderError", "parse"]

V1_PREFIX: Final = b"PROXY "
# §2.1: 107 bytes is the longest v1 line ("PROXY UNKNOWN" + two IPv6
# addresses and ports + CRLF); a receiver may refuse anything longer.
V1_MAX: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version/command, family/protocol, length
# The address block of each v2 family (§2.2): INET, INET6, UNIX.
_V2_ADDRESS_SIZE: Final = {1: 12, 2: 36, 3: 216}
# Addresses (216 at most) and TLVs (AWS and GCP send tens of bytes of ids):
# room for those, not for a peer that would make us buffer 64 KiB.
MAX_V2_PAYLOAD: Final = 1024
MAX_HEADER: Final = V2_FIXED + MAX_V2_PAYLOAD


class ProxyHeaderError(ValueError):
    """A malformed, truncated-then-closed or over-long PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes the header takes at the start of the stream
    # The client's address and port; None when the sender speaks for itself
    # (v2 LOCAL: its own health checks; v1 UNKNOWN, v2 UNSPEC or UNIX): the
    # connection's own peer is then the client (§2.1, §2.2).
    source: tuple[str, int] | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while more bytes may complete it."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyHeaderError("not a PROXY protocol header")


# -- v1: one text line ----------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    _prefix(data, V1_PREFIX)
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
        if b"\n" in data or b"\x00" in data:
            raise ProxyHeaderError("PROXY v1 line with a bare LF or a NUL")
        return None
    line = data[len(V1_PREFIX) : end]
    if line.startswith(b"UNKNOWN"):
        # §2.1: the rest of the line is to be ignored, but it is still one line.
        if b"\r" in line or b"\n" in line or line[7:8] not in (b"", b" "):
            raise ProxyHeaderError("malformed PROXY v1 UNKNOWN line")
        return ProxyHeader(end + 2, None)
    parts = line.split(b" ")
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if parts[0] == b"TCP4" else 6
    source = _v1_address(parts[1], version)
    _v1_address(parts[2], version)
    port = _v1_port(parts[3])
    _v1_port(parts[4])
    return ProxyHeader(end + 2, (source, port))


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: bytes) -> int:
    # §2.1: a decimal 0..65535; no sign, no leading zero, no spaces.
    if not (text.isdigit() and text.isascii()) or len(text) > 5 or text[:1] == b"0" != text:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1: port {port} is over 65535")
    return port


# -- v2: binary -----------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    _prefix(data, V2_SIGNATURE)
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (size,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version}")
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    if size > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {size} bytes, over {MAX_V2_PAYLOAD}")
    if len(data) < V2_FIXED + size:
        return None
    payload = data[V2_FIXED : V2_FIXED + size]
    length = V2_FIXED + size
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(length, None)
    return ProxyHeader(length, _v2_source(family, transport, payload))


def _v2_source(family: int, transport: int, payload: bytes) -> tuple[str, int] | None:
    if family == 0:  # UNSPEC: the sender does not know; the peer stands
        return None
    block = _V2_ADDRESS_SIZE.get(family)
    if block is None:
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")
    if transport != 1:  # this is a TCP listener: only STREAM can be proxied here
        raise ProxyHeaderError(f"PROXY v2 header for transport {transport}, not STREAM")
    if len(payload) < block:
        raise ProxyHeaderError("PROXY v2 addresses shorter than their family")
    _check_tlvs(payload[block:])
    if family == 3:  # UNIX: no address of ours to key on; the peer stands
        return None
    if family == 1:
        return str(ipaddress.IPv4Address(payload[0:4])), struct.unpack_from("!H", payload, 8)[0]
    return str(ipaddress.IPv6Address(payload[0:16])), struct.unpack_from("!H", payload, 32)[0]


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs (§2.2.7) must tile the rest exactly; their contents are not ours to read."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("PROXY v2 TLV cut short")
        (size,) = struct.unpack_from("!H", tlvs, at + 1)
        at += 3 + size
        if at > len(tlvs):
            raise ProxyHeaderError("PROXY v2 TLV longer than the header")


def _prefix(data: bytes, signature: bytes) -> None:
    head = data[: len(signature)]
    if head != signature[: len(head)]:
        raise ProxyHeaderError("not a PROXY protocol header")
