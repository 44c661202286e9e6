"""proxy/router.py: which service a request belongs to, with plain values
standing in for services (the Router only reads `host` and `path`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from zerodown.proxy.router import Router, prefix_matches, strip_prefix


@dataclass(frozen=True)
class Route:
    host: str
    path: str = "/"


def names(router: Router[Route], host: str, path: bytes) -> tuple[str, str] | None:
    found = router.match(host, path)
    return None if found is None else (found.host, found.path)


ROUTES = [
    Route("*"),
    Route("*", "/static"),
    Route("*.example.com"),
    Route("*.api.example.com"),
    Route("*.example.com", "/admin"),
    Route("shop.example.com"),
    Route("shop.example.com", "/cart"),
    Route("exact.test", "/only"),
]


@pytest.fixture
def router() -> Router[Route]:
    return Router(ROUTES)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # exact host first
        ("shop.example.com", b"/", ("shop.example.com", "/")),
        ("shop.example.com", b"/cart/1", ("shop.example.com", "/cart")),
        # exact beats a wildcard even when the wildcard has a longer prefix
        ("shop.example.com", b"/admin", ("shop.example.com", "/")),
        # wildcard: any depth of subdomain, longest suffix first
        ("blog.example.com", b"/", ("*.example.com", "/")),
        ("a.b.example.com", b"/x", ("*.example.com", "/")),
        ("v1.api.example.com", b"/", ("*.api.example.com", "/")),
        ("blog.example.com", b"/admin/users", ("*.example.com", "/admin")),
        # the bare domain is not one of its subdomains
        ("example.com", b"/", ("*", "/")),
        ("badexample.com", b"/", ("*", "/")),
        # catch-all
        ("other.test", b"/", ("*", "/")),
        ("other.test", b"/static/app.js", ("*", "/static")),
        # an exact host whose routes miss the path falls through to the catch-all
        ("exact.test", b"/only/x", ("exact.test", "/only")),
        ("exact.test", b"/elsewhere", ("*", "/")),
        ("exact.test", b"/static/x", ("*", "/static")),
    ],
)
def test_exact_then_wildcard_then_catch_all(
    router: Router[Route], host: str, path: bytes, expected: tuple[str, str]
) -> None:
    assert names(router, host, path) == expected


def test_a_wildcard_whose_paths_miss_falls_through_to_the_next() -> None:
    router = Router([Route("*.api.example.com", "/v2"), Route("*.example.com", "/")])
    assert names(router, "x.api.example.com", b"/v2/a") == ("*.api.example.com", "/v2")
    assert names(router, "x.api.example.com", b"/v1/a") == ("*.example.com", "/")


def test_no_match_is_none() -> None:
    router = Router([Route("a.test", "/api"), Route("*.b.test", "/x")])
    assert router.match("a.test", b"/") is None
    assert router.match("c.test", b"/api") is None
    assert router.match("q.b.test", b"/y") is None
    assert Router([]).match("a.test", b"/") is None


def test_service_hosts_match_case_insensitively() -> None:
    # The router lower-cases configured hosts; request hosts arrive lower-cased
    # (http.host_name).
    router = Router([Route("Shop.Example.COM"), Route("*.Example.Org")])
    assert names(router, "shop.example.com", b"/") == ("Shop.Example.COM", "/")
    assert names(router, "a.example.org", b"/") == ("*.Example.Org", "/")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/api", "/api"),
        (b"/api/", "/api"),
        (b"/api/v1", "/api/v1"),
        (b"/api/v1/users/7", "/api/v1"),
        (b"/api/v10", "/api"),  # segment boundary: /api/v1 does not own /api/v10
        (b"/apix", "/"),
        (b"/ap", "/"),
        (b"/", "/"),
    ],
)
def test_longest_prefix_on_a_segment_boundary(path: bytes, expected: str) -> None:
    router = Router([Route("*", "/"), Route("*", "/api"), Route("*", "/api/v1")])
    found = router.match("h", path)
    assert found is not None
    assert found.path == expected


def test_prefix_with_a_trailing_slash_still_owns_its_stem() -> None:
    router = Router([Route("*", "/docs/")])
    assert names(router, "h", b"/docs") == ("*", "/docs/")
    assert names(router, "h", b"/docs/a") == ("*", "/docs/")
    assert router.match("h", b"/docsx") is None


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        (b"/", b"/anything", True),
        (b"/a", b"/a", True),
        (b"/a", b"/a/b", True),
        (b"/a", b"/ab", False),
        (b"/a/", b"/a", True),
        (b"/a/b", b"/a", False),
    ],
)
def test_prefix_matches(prefix: bytes, path: bytes, matches: bool) -> None:
    assert prefix_matches(prefix, path) is matches


@pytest.mark.parametrize(
    ("prefix", "path", "stripped"),
    [
        (b"/api", b"/api/x?q=1", b"/x?q=1"),
        (b"/api", b"/api", b"/"),
        (b"/api", b"/api?q=1", b"/?q=1"),
        (b"/api/", b"/api/x", b"/x"),
        (b"/api/", b"/api", b"/"),
        (b"/api", b"/api/", b"/"),
        (b"/", b"/x/y", b"/x/y"),
        (b"/a/b", b"/a/b/c/d", b"/c/d"),
    ],
)
def test_strip_prefix(prefix: bytes, path: bytes, stripped: bytes) -> None:
    assert strip_prefix(prefix, path) == stripped
