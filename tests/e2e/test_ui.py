"""The dashboard in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver, against a real daemon deploying the
demo app under load.

The page asks for the token, shows the canary's weight move from 0 to 30 %,
the judge's verdict on that step, 60 % at a manual pause and 100 %, and its
Promote button ends the pause and the deploy. A screenshot of the page at
the pause goes to the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from e2e.conftest import ClusterFactory, Load, assert_no_failures, toml_str
from integration.test_admin_deploy import FakeControl, make_app
from zerodown.control.server import AdminServer
from zerodown.stats import BUCKET_LABELS, quantile

CHROMIUM = "/usr/bin/chromium"  # Debian's `chromium`
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's `chromium-driver`, the same build
# Nothing but the page under test: no update checks, no sync, no first-run UI.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is small
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)
TOKEN = "ui-e2e-token"
PAGE_TIMEOUT = 10.0  # seconds for the page to show what the daemon did
POLL = 0.1
# The demo app without its start-up delay: this test is about the page, and
# each deploy would wait it out.
COMMAND = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
CANARY = (
    '{ steps = [{ weight = 30, pause = "1s" }, { weight = 60, pause = "manual" }], '
    'min_requests = 20, min_error_increase = 0.2, min_latency_shift = "50ms" }'
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module's tests (each test uses its own origins)."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert shutil.which(binary), f"{binary} missing: apt-get install {package}"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP reports
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_page(driver: webdriver.Chrome, what: str, check: Any) -> Any:
    """Poll `check(driver)` until truthy; fail naming `what` with the page's text."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        try:
            value = check(driver)
        except (StaleElementReferenceException, WebDriverException):
            value = None  # the page re-rendered under us: look again
        if value:
            return value
        if time.monotonic() >= deadline:
            text = driver.find_element(By.TAG_NAME, "body").text
            log = "\n".join(console(driver))
            raise AssertionError(f"page: {what}: not within {PAGE_TIMEOUT:g}s\n{text}\n{log}")
        time.sleep(POLL)


def console(driver: webdriver.Chrome) -> list[str]:
    """What the page logged since the last call (errors, CSP refusals)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(entry["message"]) for entry in entries]


def on_card(driver: webdriver.Chrome, css: str) -> list[Any]:
    """Elements matching `css` on the card of the service `web`."""
    return driver.find_elements(By.CSS_SELECTOR, f"section[data-service=web] {css}")


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return " ".join(node.text for node in on_card(driver, css))


def weights(driver: webdriver.Chrome) -> dict[str, str]:
    """The split as the page shows it: version -> "30%"."""
    shown = on_card(driver, ".weight")
    return {node.get_attribute("data-version") or "?": node.text for node in shown}


def test_the_dashboard_follows_a_canary_and_promotes_it(
    make_cluster: ClusterFactory, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    cluster = make_cluster(
        command=toml_str(COMMAND),
        strategy='"canary"',
        canary=CANARY,
        env={"ZERODOWN_TOKEN": TOKEN},
    )
    console(browser)  # what an earlier test's pages logged is not this page's
    browser.get(f"http://127.0.0.1:{cluster.admin}/ui")

    # The page asks for the token; it goes to sessionStorage, never the URL.
    token_box = wait_page(browser, "the token form", lambda d: d.find_element(By.ID, "token"))
    wait_page(browser, "the form shown", lambda d: token_box.is_displayed())
    token_box.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_page(browser, "all traffic on v1", lambda d: weights(d) == {"v1": "100%"})
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('zerodown.token')") == TOKEN

    with Load(cluster.url, rate=100.0) as load:
        deploy = cluster.cli_background("deploy", "web", "v2")
        wait_page(browser, "the canary at 30 %", lambda d: weights(d) == {"v1": "70%", "v2": "30%"})
        wait_page(browser, "the canary at 60 %", lambda d: weights(d) == {"v1": "40%", "v2": "60%"})
        paused = "waiting for promote"
        wait_page(browser, "the pause", lambda d: paused in text_of(d, "[data-role=paused]"))
        timeline = text_of(browser, ".timeline")
        assert "traffic: 30% to new" in timeline
        assert "pause 1 s" in timeline
        assert "traffic: 60% to new" in timeline
        assert "pause until promote" in timeline
        # The judge's verdict on the first step, with its numbers.
        verdict = text_of(browser, ".timeline [data-role=verdict]")
        assert verdict.startswith("pass"), verdict
        assert "canary " in verdict
        assert " req, " in verdict
        events = " ".join(n.get_attribute("textContent") for n in on_card(browser, ".events li"))
        assert "traffic" in events  # heard on the event stream
        # Both versions drawn in the request-rate chart once the stats saw them serve.
        lines = "[data-chart=rps] polyline"
        wait_page(browser, "both versions charted", lambda d: len(on_card(d, lines)) == 2)
        # Four instances, each up as the data plane's health checks see it.
        health = "[data-role=health]"
        wait_page(browser, "health", lambda d: [n.text for n in on_card(d, health)] == ["up"] * 4)
        browser.save_screenshot(str(tmp_path / "dashboard-canary.png"))

        on_card(browser, "[data-action=promote]")[0].click()
        wait_page(browser, "all traffic on v2", lambda d: weights(d) == {"v2": "100%"})
        outcome = "[data-role=outcome]"
        wait_page(browser, "the deploy's end", lambda d: text_of(d, outcome) == "succeeded")
        stdout, stderr = deploy.communicate(timeout=PAGE_TIMEOUT)
    assert deploy.returncode == 0, f"{stdout}\n{stderr}\n{cluster.log_tail()}"
    assert_no_failures(load)
    assert (tmp_path / "dashboard-canary.png").stat().st_size > 10_000
    assert cluster.status()["current"] == "v2"
    # The page ran under its CSP without one refusal (a blocked script or style says so here).
    log = console(browser)
    assert [line for line in log if "Content Security Policy" in line] == []
    assert [line for line in log if "Uncaught" in line] == []  # no script error either


# -- without a token: the page acts, another origin's page cannot -----------------------

# A page of another origin that tries what a malicious site would: read the
# status, and abort the deploy three ways. It reports what it could read.
ATTACKER = """<!doctype html><title>attacker</title><script>
const admin = "http://127.0.0.1:%d";
const said = [];
const tries = [
  fetch(admin + "/v1/status").then(r => r.text()).then(t => said.push("read: " + t),
                                                        () => said.push("read blocked")),
  fetch(admin + "/v1/services/web/abort", {method: "POST", mode: "no-cors",
        headers: {"Content-Type": "text/plain"}, body: "{}"}).then(() => said.push("simple sent")),
  fetch(admin + "/v1/services/web/abort", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: "{}"})
    .then(() => said.push("json sent"), () => said.push("json blocked")),
];
Promise.allSettled(tries).then(() => {
  const form = document.createElement("form");
  form.method = "POST";
  form.action = admin + "/v1/services/web/abort";
  document.body.append(form);
  document.title = said.sort().join("; ");  // the test then submits the form
});
</script>"""


class AttackerPage(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass  # quiet


@contextlib.contextmanager
def fake_admin(control: FakeControl) -> Iterator[int]:
    """The admin API without a token, over `control`, on a loop in a thread: its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="admin", daemon=True)
    thread.start()
    server = AdminServer(make_app(control, None), "127.0.0.1", 0)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(PAGE_TIMEOUT)
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(PAGE_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(PAGE_TIMEOUT)
        loop.close()


@contextlib.contextmanager
def attacker_site(admin_port: int) -> Iterator[int]:
    handler = type("Page", (AttackerPage,), {"body": (ATTACKER % admin_port).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(PAGE_TIMEOUT)
        server.server_close()


def test_without_a_token_the_page_acts_and_another_origin_cannot(
    browser: webdriver.Chrome,
) -> None:
    control = FakeControl()
    control.outcome = None  # the deploy below runs on, so the page offers promote
    control.hold_open = True  # the event stream stays open, as the daemon's does
    with fake_admin(control) as port:
        control._new("web", "v2", "canary")
        browser.get(f"http://127.0.0.1:{port}/ui")
        wait_page(browser, "the split", lambda d: weights(d) == {"v1": "90%", "v2": "10%"})
        assert not browser.find_element(By.ID, "login").is_displayed()  # no token to ask for
        on_card(browser, "[data-action=promote]")[0].click()
        wait_page(browser, "promote sent", lambda d: ("promote", "web") in control.calls)
        wait_page(browser, "promote said", lambda d: "promote: done" in text_of(d, ".said"))

        with attacker_site(port) as evil:
            browser.get(f"http://127.0.0.1:{evil}/")
            said = wait_page(browser, "the tries", lambda d: "sent" in d.title and d.title)
            browser.execute_script("document.forms[0].submit()")
            wait_page(browser, "the form posted", lambda d: "abort" in d.current_url)
            refusal = browser.find_element(By.TAG_NAME, "body").text
    # The preflighted POST never left, the read was withheld, and the simple
    # POST and the form went out and were refused (Sec-Fetch-Site, Origin).
    assert said == "json blocked; read blocked; simple sent"
    assert [call for call in control.calls if call[0] in ("abort", "rollback")] == []
    assert "cross-site request refused" in refusal


def test_the_page_computes_quantiles_as_the_data_plane_does(browser: webdriver.Chrome) -> None:
    """rates.js turns /v1/stats' cumulative buckets into p50/p99 for the charts:
    the same numbers as zerodown.stats.quantile gives the judge and /v1/stats."""
    cases = [
        [0] * 5 + [10] + [0] * 10,
        [3, 0, 7, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5],  # a tail in +Inf
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        [0] * 16,
    ]
    with fake_admin(FakeControl()) as port:
        browser.get(f"http://127.0.0.1:{port}/ui")
        for counts in cases:
            cumulative = dict(zip(BUCKET_LABELS, itertools.accumulate(counts), strict=True))
            for q in (0.5, 0.99):
                got = browser.execute_async_script(
                    "const [buckets, q, done] = arguments;"
                    "import('/ui/rates.js').then((m) => done(m.quantile(buckets, q)));",
                    cumulative,
                    q,
                )
                want = quantile(counts, q) if sum(counts) else None
                assert got == pytest.approx(want), (counts, q)


def test_a_service_the_proxy_does_not_count_says_so_instead_of_a_chart(
    browser: webdriver.Chrome,
) -> None:
    """/v1/stats' not_counted (nginx with request_stats "canary" and no
    canary): counters that stand still would chart as 0 requests/s."""
    script = (
        "const [notCounted, done] = arguments;"
        "import('/ui/views.js').then((m) => {"
        "  const card = { parts: { charts: document.createElement('div') } };"
        "  m.renderCharts(new Map([['web', card]]), new Map(), new Set(notCounted));"
        "  const charts = card.parts.charts;"
        "  done([charts.querySelectorAll('[data-chart]').length,"
        "        charts.querySelector('[data-role=not-counted]')?.textContent ?? null]);"
        "});"
    )
    with fake_admin(FakeControl()) as port:
        browser.get(f"http://127.0.0.1:{port}/ui")
        assert browser.execute_async_script(script, []) == [4, None]
        charts, note = browser.execute_async_script(script, ["web"])
    assert charts == 0
    assert 'request_stats = "always"' in note
