"""Which URLs the server fetches: run.yaml's `archive_url_prefixes`, matched as parsed URLs.

A URL is parsed by httpx (which then fetches it) and normalised: the scheme and host case-folded,
the default port filled in, each path segment percent-decoded and the `.` and `..` segments
resolved, so `%2e%2e` climbs as `..` does. It is under a prefix when its scheme, user info (a
prefix has none), host and port are the prefix's and its path segments begin with the prefix's.
That is never a string prefix: `http://a/b` holds `http://a/b/x.tar.gz`, not `http://a/bc`,
`http://a.evil/b/x`, `http://a@evil/b/x` or `http://a/b/../x`. A segment that hides a separator
(`%2f`, a backslash) or a second escape (`%252e`) is refused, since servers read those
differently. What is fetched is the URL rebuilt from the normalised parts, so the server fetches
what was matched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, unquote

import httpx
from pydantic import AfterValidator

DEFAULT_PORTS = {"http": 80, "https": 443}
PCHAR = "!$&'()*+,;=:@"  # left as they are in a path segment, besides letters, digits and -._~


@dataclass(frozen=True)
class Location:
    """Where a URL points, as it is matched."""

    scheme: str
    userinfo: str
    host: str
    port: int
    segments: tuple[str, ...]  # the path's, decoded

    def under(self, prefix: Location) -> bool:
        n = len(prefix.segments)
        return (
            (self.scheme, self.userinfo, self.host, self.port)
            == (prefix.scheme, prefix.userinfo, prefix.host, prefix.port)
            and len(self.segments) > n
            and self.segments[:n] == prefix.segments
        )


@dataclass(frozen=True)
class UrlPrefix:
    text: str  # as run.yaml spells it, for messages
    location: Location

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        """ValueError, saying why, for a prefix that is not an http(s) URL of a folder."""
        location, url = locate(text)
        if url.query or location.userinfo:
            raise ValueError(f"{text!r}: a URL prefix has no query and no user info")
        segments = location.segments
        if segments and segments[-1] == "":  # `http://a/b/` is the folder `http://a/b`
            location = dataclasses.replace(location, segments=segments[:-1])
        return cls(text.rstrip("/") + "/", location)


def _checked(text: str) -> str:
    UrlPrefix.parse(text)
    return text


UrlPrefixText = Annotated[str, AfterValidator(_checked)]  # run.yaml's, checked as it is read


def locate(text: str) -> tuple[Location, httpx.URL]:
    """`text` parsed and normalised, and the URL to fetch for it; ValueError saying why not."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{text!r} is not a URL ({exc})") from None
    if url.scheme not in DEFAULT_PORTS or not url.host:
        raise ValueError(f"{text!r} is not an http or https URL naming a host")
    segments = _segments(url.raw_path.partition(b"?")[0].decode("ascii"), text)
    path = "/" + "/".join(quote(s, safe=PCHAR) for s in segments)
    query = b"?" + url.query if url.query else b""
    location = Location(
        scheme=url.scheme,
        userinfo=url.userinfo.decode("ascii"),
        host=url.host,
        port=url.port or DEFAULT_PORTS[url.scheme],
        segments=tuple(segments),
    )
    return location, url.copy_with(raw_path=path.encode("ascii") + query, fragment=None)


def _segments(raw_path: str, text: str) -> list[str]:
    segments: list[str] = []
    for raw in raw_path.split("/")[1:]:
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"{text!r}: the path segment {raw!r} is not UTF-8") from None
        if any(c in segment for c in "/\\%"):
            raise ValueError(
                f"{text!r}: the path segment {raw!r} hides a separator or a second escape"
            )
        if segment == "..":
            if not segments:
                raise ValueError(f"{text!r}: the path climbs above the root")
            segments.pop()
        elif segment != ".":
            segments.append(segment)
    return segments
