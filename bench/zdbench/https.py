"""The HTTPS row: zerodown (embedded, and driving HAProxy and nginx:
`[proxy.tls]` with `dataplane = "haproxy"` / `"nginx"`), plain nginx and
plain HAProxy, 1 worker (or thread) each, terminating TLS 1.3 in front of
the same backends, wrk over keep-alive connections at each of the plan's
concurrencies, shared mode, one repetition. The certificate is a
self-signed P-256 one made for the run (wrk does not verify it); the
version each proxy negotiated is recorded.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zdbench import procfs
from zdbench.model import DRIVEN, PROXY_ORDER, SAME_AS, Variant, ratio
from zdbench.procs import RUN_SLACK, StartError, Supervisor
from zdbench.servers import (
    HAPROXY,
    NGINX,
    Ports,
    free_port,
    nginx_user_line,
    proxy_tree,
    render,
    start_proxy,
    wait_port_free,
    wait_ready,
)
from zdbench.wrk import WrkOutputError, WrkResult, parse_wrk, wrk_command

# In the matrix's order: each driver's row beside the plain proxy it drives.
VARIANTS = tuple(Variant(proxy, 1) for proxy in PROXY_ORDER if proxy not in SAME_AS)


@dataclass(frozen=True, slots=True)
class HttpsRun:
    variant: Variant
    conns: int
    tls_version: str | None  # what a client offered TLS 1.2 and 1.3 got
    wrk: WrkResult
    cpu_us: float | None


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, key P-256: (cert, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zdbench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "bench.pem", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def negotiated(port: int) -> str | None:
    """The TLS version a client allowing 1.2 and 1.3 gets from the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version()
    except OSError:
        return None


def start(
    sup: Supervisor, variant: Variant, ports: Ports, work: Path, tls_port: int
) -> subprocess.Popen[bytes]:
    cert, key = make_cert(work / "tls")
    if variant.proxy == "zerodown" or variant.proxy in DRIVEN:
        extra = f'\n[proxy.tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert = "{cert}"\nkey = "{key}"'
        return start_proxy(sup, variant, ports, work, cpus=None, zerodown_extra=extra)
    b1, b2 = ports.backends
    values = {"dir": work, "port": ports.front, "tls_port": tls_port, "workers": variant.workers}
    if variant.proxy == "haproxy":
        pem = work / "tls" / "bench-with-key.pem"  # HAProxy's crt: the chain, then the key
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        pem.chmod(0o600)
        conf = work / "haproxy.cfg"
        conf.write_text(render("haproxy-https.cfg", **values, backend1=b1, backend2=b2, pem=pem))
        argv = [HAPROXY, "-db", "-f", str(conf)]
    else:
        conf = work / "nginx.conf"
        conf.write_text(
            render(
                "nginx-proxy-https.conf",
                **values,
                backend1=b1,
                backend2=b2,
                cert=cert,
                key=key,
                user=nginx_user_line(),
            )
        )
        argv = [NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    proc = sup.start(argv, log=work / "stdout.log")
    wait_ready(proc, ports.front, work / "stdout.log", work / "error.log")
    return proc


def measure(
    sup: Supervisor,
    work: Path,
    ports: Ports,
    conns: Sequence[int],
    duration_s: float,
    threads: int,
    variants: Sequence[Variant] = VARIANTS,
) -> tuple[list[HttpsRun], list[str]]:
    """Every variant at every concurrency: the runs, and what failed."""
    runs: list[HttpsRun] = []
    failures: list[str] = []
    for variant in variants:
        tls_port = free_port()
        try:
            proc = start(sup, variant, ports, work / f"https-{variant.key}", tls_port)
        except StartError as exc:
            failures.append(f"https {variant.label} did not start: {exc}")
            print(f"  https {variant.label}: did not start: {exc}", flush=True)
            wait_port_free(ports.front)
            continue
        try:
            version = negotiated(tls_port)
            url = f"https://127.0.0.1:{tls_port}/"
            for count in conns:
                before = proxy_tree(proc.pid, work / f"https-{variant.key}")
                argv = wrk_command(url, connections=count, threads=threads, duration_s=duration_s)
                try:
                    result = parse_wrk(sup.run(argv, timeout=duration_s + RUN_SLACK))
                except (subprocess.TimeoutExpired, WrkOutputError):
                    failures.append(f"https {variant.label} c={count}: wrk did not finish")
                    continue
                after = proxy_tree(proc.pid, work / f"https-{variant.key}")
                ticks = procfs.ticks_delta(before, after)
                cpu = procfs.cpu_us_per_request(ticks, result.requests)
                runs.append(HttpsRun(variant, count, version, result, cpu))
                print(f"  https {variant.label} c={count}: {result.rps:,.0f} req/s", flush=True)
        finally:
            sup.stop(proc)
            wait_port_free(ports.front)
    return runs, failures


def https_table(runs: Sequence[HttpsRun]) -> list[str]:
    """Markdown lines: one per run, with req/s and p99 against nginx at the same conns."""
    names = ["conns", "proxy", "TLS", "req/s", "p50", "p99", "errors", "timeouts"]
    names += ["CPU µs/req", "req/s ÷ nginx"]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    nginx = {r.conns: r for r in runs if r.variant.proxy == "nginx"}
    for r in sorted(runs, key=lambda r: (r.conns, PROXY_ORDER.get(r.variant.proxy, 9))):
        base = nginx.get(r.conns)
        versus = ratio(r.wrk.rps, base.wrk.rps if base else None)
        s = r.wrk.socket
        cells = [
            f"{r.conns:,}",
            r.variant.label,
            r.tls_version or "—",
            f"{r.wrk.rps:,.0f}",
            _ms(r.wrk.p50_us),
            _ms(r.wrk.p99_us),
            str(s.connect + s.read + s.write + r.wrk.non_2xx),
            str(s.timeout),
            "—" if r.cpu_us is None else f"{r.cpu_us:.1f}",
            "—" if versus is None else f"{versus:.2f}\N{MULTIPLICATION SIGN}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:,.2f} ms"
