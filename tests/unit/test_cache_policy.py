"""The cache's pure parts: what RFC 9111 lets a shared cache store and for
how long (cache_policy.py), the LRU store (cache.py), the generation that
keys a service's cache (cachespec.py) and when a rebuilt service keeps its
cache (caching.carried_over). No sockets, no clock."""

from __future__ import annotations

import pytest

from zerodown.cachespec import CacheSpec, generation, generation_tag
from zerodown.proxy.cache import ENTRY_OVERHEAD, CacheStore, Entry
from zerodown.proxy.cache_policy import (
    Storable,
    cacheable_request,
    directives,
    may_look_up,
    not_modified,
    secondary_key,
    storable,
)
from zerodown.proxy.caching import carried_over
from zerodown.proxy.http import RequestHead
from zerodown.routing import PoolSpec, ServiceSpec, TargetSpec

NOW = 1_700_000_000.0  # wall clock, for Expires


def head(method: bytes = b"GET", **fields: str) -> RequestHead:
    headers = [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]
    return RequestHead(method, b"/x?y=1", b"1.1", headers, True, host=b"example.test")


def keep(
    status: int = 200, *, authorization: bool = False, authorized: bool = False, **fields: str
) -> Storable | None:
    headers = [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]
    names = [name.lower() for name, _ in headers]
    return storable(
        status,
        headers,
        names,
        with_authorization=authorization,
        authorized=authorized,
        now=NOW,
    )


# -- requests --------------------------------------------------------------------


def test_only_get_and_head_without_a_body_take_part() -> None:
    assert cacheable_request(head(b"GET"))
    assert cacheable_request(head(b"HEAD"))
    assert not cacheable_request(head(b"POST"))
    with_body = head(b"GET")
    with_body.content_length = 3
    assert not cacheable_request(with_body)
    upgrade = head(b"GET")
    upgrade.upgrade = b"websocket"
    assert not cacheable_request(upgrade)


def test_a_request_with_authorization_is_looked_up_only_when_allowed() -> None:
    assert may_look_up(head(), authorized=False)
    assert not may_look_up(head(Authorization="Bearer x"), authorized=False)
    assert may_look_up(head(Authorization="Bearer x"), authorized=True)


# -- responses -------------------------------------------------------------------


def test_directives_are_read_case_blind_with_quotes_removed() -> None:
    found = directives([b'Max-Age="60", no-cache', b"S-MAXAGE=5,public"])
    assert found == {b"max-age": b"60", b"no-cache": None, b"s-maxage": b"5", b"public": None}


def test_s_maxage_comes_before_max_age_and_max_age_before_expires() -> None:
    shared = keep(Cache_Control="max-age=60, s-maxage=5", Expires="Thu, 01 Jan 2099 00:00:00 GMT")
    assert shared is not None
    assert shared.lifetime == 5
    private = keep(Cache_Control="max-age=60", Expires="Thu, 01 Jan 2099 00:00:00 GMT")
    assert private is not None
    assert private.lifetime == 60


def test_expires_counts_from_the_date_the_origin_gave() -> None:
    rule = keep(Expires="Sun, 06 Nov 1994 08:49:37 GMT", Date="Sun, 06 Nov 1994 08:48:37 GMT")
    assert rule is not None
    assert rule.lifetime == 60
    assert keep(Expires="0") is None  # invalid: already expired (RFC 9111 §5.3)
    assert keep(Expires="Sun, 06 Nov 1994 08:49:37 GMT") is None  # long past by NOW


@pytest.mark.parametrize(
    "control", ["no-store, max-age=60", "private, max-age=60", "no-cache, max-age=60", "max-age=0"]
)
def test_what_may_not_be_kept_is_not(control: str) -> None:
    assert keep(Cache_Control=control) is None


def test_a_response_that_says_nothing_is_not_kept() -> None:
    assert keep() is None
    assert keep(ETag='"v1"', Last_Modified="Sun, 06 Nov 1994 08:49:37 GMT") is None
    assert keep(Cache_Control="max-age=soon") is None


def test_statuses_outside_the_final_ones_and_set_cookie_are_not_kept() -> None:
    assert keep(404, Cache_Control="max-age=60") is not None
    assert keep(302, Cache_Control="max-age=60") is None
    assert keep(500, Cache_Control="max-age=60") is None
    assert keep(Cache_Control="max-age=60", Set_Cookie="sid=1") is None


def test_an_answer_to_a_request_with_authorization_needs_a_shared_directive() -> None:
    assert keep(Cache_Control="max-age=60", authorization=True) is None
    for shared in ("public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"):
        assert keep(Cache_Control=shared, authorization=True) is not None
    assert keep(Cache_Control="max-age=60", authorization=True, authorized=True) is not None


def test_vary_names_are_lowered_and_sorted_and_star_is_never_kept() -> None:
    rule = keep(Cache_Control="max-age=60", Vary="User-Agent, accept-encoding")
    assert rule is not None
    assert rule.vary == (b"accept-encoding", b"user-agent")
    assert keep(Cache_Control="max-age=60", Vary="Origin, *") is None


def test_the_age_it_came_with_counts_and_an_old_one_is_not_kept() -> None:
    rule = keep(Cache_Control="max-age=60", Age="50")
    assert rule is not None
    assert rule.initial_age == 50
    assert keep(Cache_Control="max-age=60", Age="60") is None


def test_the_secondary_key_is_the_request_values_of_the_vary_fields() -> None:
    vary = (b"accept-encoding", b"x-lang")
    assert secondary_key(head(Accept_Encoding="gzip,  br"), vary) == (b"gzip,br", None)
    assert secondary_key(head(X_Lang="de"), vary) == (None, b"de")


# -- the store ---------------------------------------------------------------------


def entry(body: bytes = b"x", *, vary: tuple[bytes, ...] = (), born: float = 0.0) -> Entry:
    return Entry(200, b"OK", ((b"Cache-Control", b"max-age=10"),), body, vary, born, 10.0)


def test_an_entry_is_served_while_fresh_and_dropped_after() -> None:
    store = CacheStore(10_000)
    store.put(b"p", (), entry(born=100.0))
    assert store.vary(b"p") == ()
    assert store.get(b"p", (), 109.9) is not None
    assert store.get(b"p", (), 110.0) is None
    assert len(store) == 0
    assert store.size == 0
    assert store.vary(b"p") is None


def test_the_least_recently_used_goes_first_when_full() -> None:
    one = entry(b"a" * 100)
    store = CacheStore(3 * one.size)
    for key in (b"a", b"b", b"c"):
        store.put(key, (), entry(b"a" * 100))
    assert store.get(b"a", (), 0.0) is not None  # a is used: b is now the oldest
    store.put(b"d", (), entry(b"a" * 100))
    assert [store.get(k, (), 0.0) is not None for k in (b"a", b"b", b"c", b"d")] == [
        True,
        False,
        True,
        True,
    ]
    assert store.size == 3 * one.size
    assert store.evicted == 1


def test_sizes_count_headers_body_and_overhead_and_a_too_large_entry_is_refused() -> None:
    e = entry(b"12345")
    assert e.size == ENTRY_OVERHEAD + 5 + len(b"Cache-Control") + len(b"max-age=10")
    store = CacheStore(e.size - 1)
    store.put(b"p", (), e)
    assert len(store) == 0


def test_variants_share_a_primary_key_and_a_new_vary_replaces_them() -> None:
    store = CacheStore(100_000)
    store.put(b"p", (b"gzip",), entry(b"zipped", vary=(b"accept-encoding",)))
    store.put(b"p", (None,), entry(b"plain", vary=(b"accept-encoding",)))
    assert store.vary(b"p") == (b"accept-encoding",)
    found = store.get(b"p", (b"gzip",), 0.0)
    assert found is not None
    assert found.body == b"zipped"
    store.put(b"p", (b"de",), entry(b"deutsch", vary=(b"accept-language",)))
    assert store.vary(b"p") == (b"accept-language",)
    assert len(store) == 1
    assert store.get(b"p", (b"gzip",), 0.0) is None


def test_a_cleared_store_refuses_what_comes_late() -> None:
    store = CacheStore(10_000)
    store.put(b"p", (), entry())
    store.clear()
    store.put(b"q", (), entry())
    assert len(store) == 0
    assert store.size == 0


# -- generations -------------------------------------------------------------------


def spec(*targets: TargetSpec, cache: CacheSpec | None = None) -> ServiceSpec:
    return ServiceSpec(name="web", stable=PoolSpec(targets=targets), cache=cache or CacheSpec())


def test_the_generation_is_the_releases_that_take_traffic() -> None:
    v1 = TargetSpec(address="127.0.0.1:1", version="v1")
    v2 = TargetSpec(address="127.0.0.1:2", version="v2")
    leaving = TargetSpec(address="127.0.0.1:3", version="v0", state="draining")
    fixed = TargetSpec(address="127.0.0.1:4")
    assert generation(spec(v1, v2, leaving)) == ("v1", "v2")
    assert generation(spec(fixed)) == ("127.0.0.1:4",)
    assert generation_tag(spec(v1)) == generation_tag(spec(v1))
    assert generation_tag(spec(v1)) != generation_tag(spec(v1, v2))


def test_a_rebuilt_service_keeps_its_cache_until_the_generation_or_settings_change() -> None:
    v1 = TargetSpec(address="127.0.0.1:1", version="v1")
    v2 = TargetSpec(address="127.0.0.1:2", version="v2")
    first = carried_over(spec(v1), None)
    assert first is not None
    first.store.put(b"p", (), entry())
    assert carried_over(spec(v1), first) is first
    switched = carried_over(spec(v2), first)
    assert switched is not None
    assert switched is not first
    assert len(first.store) == 0
    assert first.store.closed
    resized = carried_over(spec(v2, cache=CacheSpec(max_size=2048, max_object_size=1024)), switched)
    assert resized is not switched
    assert carried_over(ServiceSpec(name="web"), resized) is None


def test_an_object_limit_over_half_the_cache_is_refused() -> None:
    with pytest.raises(ValueError, match="at most half of max_size"):
        CacheSpec(max_size=4096, max_object_size=3000)


def test_a_conditional_request_is_told_its_copy_is_current() -> None:
    stored = ((b"ETag", b'"v1"'), (b"Last-Modified", b"Sun, 06 Nov 1994 08:49:37 GMT"))
    assert not_modified(head(If_None_Match='W/"v1", "v0"'), stored)
    assert not_modified(head(If_None_Match="*"), stored)
    assert not not_modified(head(If_None_Match='"v2"'), stored)
    # If-None-Match decides alone when given (RFC 9110 §13.2.2).
    late = "Mon, 07 Nov 1994 00:00:00 GMT"
    assert not not_modified(head(If_None_Match='"v2"', If_Modified_Since=late), stored)
    assert not_modified(head(If_Modified_Since=late), stored)
    assert not not_modified(head(If_Modified_Since="Sat, 05 Nov 1994 00:00:00 GMT"), stored)
    assert not not_modified(head(), stored)
    assert not not_modified(head(If_None_Match='"v1"'), ())
