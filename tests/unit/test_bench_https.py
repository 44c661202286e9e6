"""The bench's HTTPS row: its table and the certificate it makes. Pure but
for the files of make_cert (under tmp_path)."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from zdbench.https import HttpsRun, https_table, make_cert
from zdbench.model import Variant
from zdbench.report import Report, to_markdown
from zdbench.wrk import SocketErrors, WrkResult


def run(proxy: str, rps: float) -> HttpsRun:
    result = WrkResult(
        requests=int(rps * 3),
        duration_s=3.0,
        rps=rps,
        bytes_read=0,
        latency_us={50.0: 2000.0, 99.0: 9000.0},
        socket=SocketErrors(read=1),
    )
    return HttpsRun(Variant(proxy, 1), 50, "TLSv1.3", result, 40.0)


def test_the_https_table_compares_with_nginx_at_the_same_conns() -> None:
    lines = https_table([run("nginx", 8000.0), run("zerodown", 4000.0)])
    assert lines[2] == (
        "| 50 | zerodown 1 worker | TLSv1.3 | 4,000 | 2.00 ms | 9.00 ms | 1 | 0 | 40.0 "
        "| 0.50\N{MULTIPLICATION SIGN} |"
    )
    assert lines[3].startswith("| 50 | nginx 1 worker | TLSv1.3 | 8,000 |")
    report = Report("2026-12-04", "make bench", {}, {}, https=[run("nginx", 1.0)])
    assert "## HTTPS: TLS 1.3 terminated" in to_markdown(report)


def test_the_bench_certificate_loads_with_its_key(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    assert key.stat().st_mode & 0o777 == 0o600
