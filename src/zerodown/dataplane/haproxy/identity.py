"""Client-identity fields a client must not send itself, dropped by HAProxy
as the embedded proxy drops them (proxy/http.py).

Apps and frameworks believe X-Real-IP, Forwarded, True-Client-IP and the
like (proxy/http.CLIENT_IDENTITY_HEADERS): they pass only from
`trusted_proxies`. A name that spells a dash as an underscore lands on the
same CGI/WSGI key as the real one (X-Forwarded_For is HTTP_X_FORWARDED_FOR),
so such spellings of the fields the proxy sets are dropped from everyone;
nginx drops every name with an underscore by default, HAProxy passes them.

One `del-header -m reg` per set: HAProxy walks the headers once against a
compiled regex, where a rule per name would walk them once per name: 1.1k
instructions a request (bench/callgrind_proxy.sh). HAProxy lowercases HTTP/1
header names as it parses them; `(?i)` costs nothing and keeps the regex
right whatever the parser does.
"""

from __future__ import annotations

from collections.abc import Iterable

from zerodown.proxy.http import CLIENT_IDENTITY_HEADERS, ENVIRON_SPOOFABLE, FORWARDED_HEADERS

__all__ = ["identity_rules", "spoofed_spellings", "untrusted_identity"]


def identity_rules(trusted: bool) -> list[str]:
    """The frontend's rules; with trusted proxies, the acl `trusted` is defined before them.

    With none, the one regex also drops the client's own X-Forwarded-* and
    X-Request-ID, so that ours are added, not set (a set-header is a delete
    and an add: 1.3k instructions a request for X-Forwarded-Proto alone)."""
    if not trusted:
        either = _whole(_names(FORWARDED_HEADERS), _names(CLIENT_IDENTITY_HEADERS), _spellings())
        return [f"http-request del-header {either} -m reg"]
    return [
        f"http-request del-header {spoofed_spellings()} -m reg",
        f"http-request del-header {untrusted_identity()} -m reg unless trusted",
    ]


def untrusted_identity() -> str:
    """The regex of the names only a trusted proxy may send."""
    return _whole(_names(CLIENT_IDENTITY_HEADERS))


def spoofed_spellings() -> str:
    """The regex of the names that, with an underscore for a dash, reach a
    field the proxy sets or frames by (at least one underscore: the dashed
    spelling itself is handled by the rules that set it)."""
    return _whole(_spellings())


def _names(names: Iterable[bytes]) -> str:
    return "|".join(sorted(name.decode() for name in names))  # [a-z-]: nothing to escape


def _spellings() -> str:
    dashed = sorted(name.decode() for name in ENVIRON_SPOOFABLE if b"_" in name)
    return "(?=[^_]*_)(?:" + "|".join(name.replace("_", "[-_]") for name in dashed) + ")"


def _whole(*alternatives: str) -> str:
    """A regex matching a whole name, caselessly, that any of these match."""
    return "(?i)^(?:" + "|".join(alternatives) + ")$"
