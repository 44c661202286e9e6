"""Sticky sessions, the pure part: the token, the cookie, and which target a
cookie may still reach (proxy/sticky.py and Service.choose/pick).

No sockets, no loop: a Service built from a spec, a controllable clock,
health and drains moved by hand.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from zerodown.dataplane.sticky_key import KEY_FILE, sticky_key
from zerodown.errors import ConfigError
from zerodown.proxy import http
from zerodown.proxy.service import Choice, Service
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.sticky import came_over_tls, new_key, set_cookie, token
from zerodown.routing import PoolSpec, ServiceSpec, Split, StickySpec, TargetSpec, TargetState

A, B, C = (f"10.0.0.{n}:8000" for n in (1, 2, 3))
KEY = new_key()
STICKY = StickySpec(cookie="zd_route", ttl=3600)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def build(
    stable: dict[str, TargetState],
    canary: dict[str, TargetState] | None = None,
    *,
    clock: Clock | None = None,
    key: str = KEY,
    split: Split | None = None,
) -> Service:
    def pool(targets: dict[str, TargetState]) -> PoolSpec:
        return PoolSpec(targets=tuple(TargetSpec(address=a, state=s) for a, s in targets.items()))

    spec = ServiceSpec(
        name="web",
        stable=pool(stable),
        canary=pool(canary or {}),
        split=split or Split(),
        health=None,
        sticky=STICKY,
    )
    settings = ProxySettings(sticky_key=key)
    return Service(spec, settings, clock=clock or Clock(), checks=False)


def head(cookie: str | None = None, **headers: str) -> http.RequestHead:
    fields = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    if cookie is not None:
        fields.append((b"Cookie", cookie.encode()))
    return http.RequestHead(b"GET", b"/", b"1.1", fields, keep_alive=True)


def cookie_for(address: str, key: str = KEY, service: str = "web") -> str:
    return f"zd_route={token(bytes.fromhex(key), service, address)}"


def served(service: Service, cookie: str | None, n: int = 1) -> Counter[str]:
    """Where n requests with this cookie go (first attempts)."""
    seen = Counter[str]()
    for _ in range(n):
        choice = service.choose(head(cookie), "1.2.3.4", b"/")
        target = service.pick(choice, ())
        assert target is not None
        seen[target.address] += 1
    return seen


def header(service: Service, cookie: str | None, forwarded: http.Forwarded | None = None) -> str:
    """The Set-Cookie the response to one request carries ("" for none)."""
    request = head(cookie)
    choice: Choice = service.choose(request, "1.2.3.4", b"/")
    target = service.pick(choice, ())
    assert target is not None
    value = service.sticky_header(choice, target, request, forwarded or http.Forwarded("1.2.3.4"))
    return (value or b"").decode()


# -- the token and the cookie ---------------------------------------------------------


def test_a_token_is_opaque_stable_and_bound_to_key_service_and_address() -> None:
    key = bytes.fromhex(KEY)
    value = token(key, "web", A)
    assert value == token(key, "web", A)  # every worker, every restart with the key
    assert "10.0.0" not in value
    assert "8000" not in value
    assert len(value) == 22
    others = {token(key, "web", B), token(key, "api", A), token(bytes.fromhex(new_key()), "web", A)}
    assert value not in others
    assert len(others) == 3


def test_the_cookie_has_max_age_from_ttl_and_the_safe_attributes() -> None:
    assert set_cookie(StickySpec(ttl=90.5), "T", secure=False) == (
        "zd_route=T; Max-Age=91; Path=/; HttpOnly; SameSite=Lax"
    )
    assert set_cookie(STICKY, "T", secure=True).endswith("; SameSite=Lax; Secure")


def test_tls_is_our_listener_or_a_trusted_proxy_saying_so() -> None:
    https = head(X_Forwarded_Proto="https")
    assert came_over_tls(head(), http.Forwarded("1.2.3.4", proto=b"https"))
    assert came_over_tls(https, http.Forwarded("10.0.0.9", trusted=True))
    assert not came_over_tls(https, http.Forwarded("1.2.3.4"))  # anyone can send the header
    assert not came_over_tls(head(), http.Forwarded("10.0.0.9", trusted=True))


# -- which target ------------------------------------------------------------------------


def test_a_valid_cookie_keeps_the_client_on_its_target() -> None:
    service = build({A: "ready", B: "ready", C: "ready"})
    for address in (A, B, C):
        assert served(service, cookie_for(address), 20) == {address: 20}
    assert header(service, cookie_for(B)) == ""  # nothing to rewrite


def test_without_a_cookie_the_balancer_chooses_and_the_cookie_names_its_choice() -> None:
    service = build({A: "ready", B: "ready"})
    assert served(service, None, 20) == {A: 10, B: 10}
    request = head()
    choice = service.choose(request, "1.2.3.4", b"/")
    target = service.pick(choice, ())
    assert target is not None
    value = service.sticky_header(choice, target, request, http.Forwarded("1.2.3.4"))
    assert (
        value
        == f"{cookie_for(target.address)}; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax".encode()
    )


@pytest.mark.parametrize(
    "cookie",
    [
        "zd_route=AAAAAAAAAAAAAAAAAAAAAA",  # forged
        "zd_route=" + token(b"k" * 32, "web", "10.0.0.1:8000"),  # signed with another key
        cookie_for(A, service="api"),  # another service's
        cookie_for("10.9.9.9:1"),  # an instance long gone
        "zd_route=",
        "zd_route=\x00\xff;;=;",
    ],
    # Names, not values: two values are signed with a key made per process,
    # and test processes (xdist) must collect the same ids.
    ids=["forged", "other-key", "other-service", "gone", "empty", "garbage"],
)
def test_a_forged_or_foreign_cookie_is_ignored_and_rewritten(cookie: str) -> None:
    service = build({A: "ready", B: "ready"})
    assert served(service, cookie, 20) == {A: 10, B: 10}
    assert header(service, cookie).startswith("zd_route=")


def test_a_draining_target_keeps_its_clients_for_the_first_half_of_the_drain() -> None:
    clock = Clock()
    service = build({A: "draining", B: "ready"}, clock=clock)
    target = service.targets_by_address()[A]
    assert served(service, cookie_for(A), 3) == {B: 3}  # draining without a drain: no
    target.sticky_until = clock.now + 5
    assert served(service, cookie_for(A), 3) == {A: 3}
    assert served(service, None, 3) == {B: 3}  # new clients never go there
    clock.now += 5
    assert served(service, cookie_for(A), 3) == {B: 3}
    assert header(service, cookie_for(A)) == cookie_for(B) + (
        "; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"
    )


@pytest.mark.parametrize("state", ["down", "gone"])
def test_a_target_down_or_gone_moves_its_clients(state: str) -> None:
    service = build({A: "ready", B: "ready"})
    target = service.targets_by_address()[A]
    if state == "gone":
        service = Service(
            service.spec.model_copy(update={"stable": PoolSpec(targets=(TargetSpec(address=B),))}),
            service.settings,
            service,
            checks=False,
        )
    else:
        target.set_state("down")
    assert served(service, cookie_for(A), 5) == {B: 5}


def test_a_target_out_by_health_moves_its_clients_and_no_retry_goes_back_there() -> None:
    service = build({A: "ready", B: "ready"})
    target = service.targets_by_address()[A]
    target.health.on_check(False, 0.0)
    assert served(service, cookie_for(A), 5) == {B: 5}
    target.health.on_check(True, 0.0)
    choice = service.choose(head(cookie_for(A)), "1.2.3.4", b"/")
    assert service.pick(choice, ()) is target
    retried = service.pick(choice, (target,))
    assert retried is not None
    assert retried.address == B


def test_the_key_is_every_workers_so_one_signs_what_the_others_honour() -> None:
    one, two = build({A: "ready", B: "ready"}), build({A: "ready", B: "ready"})
    assert header(one, None).split(";")[0] in (cookie_for(A), cookie_for(B))
    assert served(two, cookie_for(B), 4) == {B: 4}
    stranger = build({A: "ready", B: "ready"}, key=new_key())
    assert served(stranger, cookie_for(B), 4) == {A: 2, B: 2}


# -- during a canary: one version per client -------------------------------------------


def test_in_a_canary_the_instance_cookie_decides_the_pool_and_the_pool_cookie_agrees() -> None:
    split = Split(canary_weight=100.0, sticky_cookie="zerodown_pool")
    service = build({A: "ready"}, {B: "ready"}, split=split)
    # Bound to the stable A although every new client goes to the canary.
    assert served(service, cookie_for(A), 5) == {A: 5}
    assert header(service, cookie_for(A)) == "zerodown_pool=stable; Path=/; HttpOnly"
    assert header(service, cookie_for(A) + "; zerodown_pool=stable") == ""
    # A new client gets both cookies, naming one version.
    both = header(service, None)
    assert both.startswith("zerodown_pool=canary; Path=/; HttpOnly\r\nSet-Cookie: ")
    assert cookie_for(B) in both


def test_when_its_instance_is_gone_the_pool_cookie_keeps_the_client_on_its_version() -> None:
    split = Split(canary_weight=100.0, sticky_cookie="zerodown_pool")
    service = build({A: "down", C: "ready"}, {B: "ready"}, split=split)
    assert served(service, cookie_for(A) + "; zerodown_pool=stable", 5) == {C: 5}


# -- the key file ------------------------------------------------------------------------


def test_the_key_is_made_once_private_and_read_after(tmp_path: Path) -> None:
    first = sticky_key(tmp_path / "state")
    assert len(bytes.fromhex(first)) == 32
    assert (tmp_path / "state" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert sticky_key(tmp_path / "state") == first
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / KEY_FILE]


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not hex\n")
    with pytest.raises(ConfigError, match=r"sticky\.key is not a sticky-cookie key; delete it"):
        sticky_key(tmp_path)
