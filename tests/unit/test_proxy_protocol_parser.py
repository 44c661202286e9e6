"""The PROXY protocol header parser (proxy/proxy_protocol.py): v1, v2, strictness."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerodown.proxy.proxy_protocol import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse,
)


def v2(command: int = 1, family: int = 1, transport: int = 1, payload: bytes = b"") -> bytes:
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family << 4 | transport])
        + (struct.pack("!H", len(payload)) + payload)
    )


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


# -- v1 --------------------------------------------------------------------------


def test_v1_tcp4_names_the_source_and_its_length() -> None:
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
    assert parse(line + b"GET / HTTP/1.1\r\n") == ProxyHeader(len(line), ("203.0.113.7", 56324))


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n"
    assert parse(line) == ProxyHeader(len(line), ("2001:db8::7", 1))


def test_v1_unknown_leaves_the_peer() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, None)
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(line) == ProxyHeader(len(line), None)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n",  # a field missing
        b"PROXY TCP4 203.0.113.7  10.0.0.1 56324 443\r\n",  # two spaces
        b"PROXY TCP4 2001:db8::7 10.0.0.1 56324 443\r\n",  # family mismatch
        b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
        b"PROXY TCP4 203.0.113.07 10.0.0.1 1 2\r\n",  # leading zero in an octet
        b"PROXY TCP4 203.0.113.7 10.0.0.1 056324 443\r\n",  # leading zero in a port
        b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n",
        b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
        b"PROXY tcp4 203.0.113.7 10.0.0.1 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",  # bare LF
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 \r\n",  # trailing space
        b"PROXY  TCP4 203.0.113.7 10.0.0.1 1 2\r\n",
        b"PROXX TCP4 203.0.113.7 10.0.0.1 1 2\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP from a peer that must send one
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


def test_v1_over_long_line_is_refused() -> None:
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse(b"PROXY UNKNOWN " + b"x" * 100)


@pytest.mark.parametrize("cut", range(0, 43))
def test_v1_truncated_waits_for_more(cut: int) -> None:
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
    assert parse(line[:cut]) is None


# -- v2 --------------------------------------------------------------------------


def test_v2_inet_names_the_source() -> None:
    header = v2(payload=inet4("198.51.100.9", "10.0.0.1", 40000, 80))
    assert parse(header + b"\x16\x03\x01") == ProxyHeader(28, ("198.51.100.9", 40000))


def test_v2_inet6_names_the_source() -> None:
    header = v2(family=2, payload=inet6("2001:db8::9", "2001:db8::1", 1234, 443))
    assert parse(header) == ProxyHeader(52, ("2001:db8::9", 1234))


def test_v2_tlvs_are_skipped_but_must_tile_the_rest() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\xea\x00\x05vpc-1"  # ALPN, an AWS VPC endpoint id
    header = v2(payload=inet4("198.51.100.9", "10.0.0.1", 1, 2) + tlvs)
    assert parse(header) == ProxyHeader(len(header), ("198.51.100.9", 1))
    for bad in (b"\x01\x00", b"\x01\x00\x05h2"):
        with pytest.raises(ProxyHeaderError, match="TLV"):
            parse(v2(payload=inet4("198.51.100.9", "10.0.0.1", 1, 2) + bad))


def test_v2_local_leaves_the_peer() -> None:
    # A balancer's own health check: LOCAL, with or without addresses.
    assert parse(v2(command=0, family=0, transport=0)) == ProxyHeader(16, None)
    header = v2(command=0, payload=inet4("1.2.3.4", "5.6.7.8", 1, 2))
    assert parse(header) == ProxyHeader(28, None)


def test_v2_unspec_and_unix_leave_the_peer() -> None:
    assert parse(v2(family=0, transport=0)) == ProxyHeader(16, None)
    assert parse(v2(family=3, payload=bytes(216))) == ProxyHeader(232, None)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "command 2"),
        (v2(family=4, payload=bytes(12)), "family 4"),
        (v2(transport=2, payload=bytes(12)), "transport 2"),  # DGRAM on a TCP listener
        (v2(payload=bytes(8)), "shorter than their family"),
        (v2(family=2, payload=bytes(12)), "shorter than their family"),
        (V2_SIGNATURE + b"\x21\x11\x04\x01", "over 1024"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "not a PROXY"),
    ],
)
def test_v2_malformed_is_refused(header: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(header)


def test_v2_truncated_waits_for_more() -> None:
    header = v2(payload=inet4("198.51.100.9", "10.0.0.1", 1, 2))
    for cut in range(len(header)):
        assert parse(header[:cut]) is None


# -- any input -------------------------------------------------------------------


@given(st.binary(max_size=MAX_HEADER + 16))
def test_any_bytes_parse_or_refuse_never_crash(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    if header is not None:
        assert 15 <= header.length <= min(len(data), MAX_HEADER)


@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=64),
)
def test_v1_and_v2_round_trip(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    rest: bytes,
) -> None:
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    assert parse(line + rest) == ProxyHeader(len(line), (str(src), sport))
    binary = v2(payload=inet4(str(src), str(dst), sport, dport))
    assert parse(binary + rest) == ProxyHeader(28, (str(src), sport))


@given(st.ip_addresses(v=6), st.integers(0, 65535), st.binary(max_size=32))
def test_v1_and_v2_round_trip_ipv6(src: ipaddress.IPv6Address, port: int, rest: bytes) -> None:
    line = f"PROXY TCP6 {src} ::1 {port} 443\r\n".encode()
    assert parse(line + rest) == ProxyHeader(len(line), (str(src), port))
    binary = v2(family=2, payload=inet6(str(src), "::1", port, 443))
    assert parse(binary + rest) == ProxyHeader(52, (str(src), port))


@given(st.binary(min_size=1, max_size=200))
def test_any_prefix_of_a_good_header_is_incomplete_or_the_header(tail: bytes) -> None:
    # Truncation never turns a good header into a refusal, whatever follows it.
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n"
    for cut in range(len(line) + 1):
        got = parse((line + tail)[:cut])
        assert got is None or got.length == len(line)
