"""normalize_host, which every reader of a site name uses: the collector, `weir site add`,
`weir import-logs`, the API and the live feed."""

from __future__ import annotations

import pytest

from streams.sites import normalize_host


@pytest.mark.parametrize(("given", "expected"), [
    ("Example.COM.", "example.com"),
    (" example.com:8080 ", "example.com"),
    ("example.com.:80", "example.com"),
    ("example.com:", "example.com"),
    ("http://foo.example/path", "foo.example"),
    ("https://www.x.com/", "www.x.com"),
    ("HTTPS://user:secret@Shop.Example:8443/a?b=c#d", "shop.example"),
    ("https://foo.example?q=1", "foo.example"),
    ("https://foo.example#top", "foo.example"),
    ("android-app://com.example.app/", "com.example.app"),
    ("//cdn.example/x", "cdn.example"),
    ("http://foo.example.:8080/", "foo.example"),
    ("[::1]:8080", "[::1]"),
    ("http://[2001:db8::1]:8080/", "[2001:db8::1]"),
    ("2001:db8::1", "2001:db8::1"),
])
def test_normalize_host_returns_the_host(given, expected):
    assert normalize_host(given) == expected


@pytest.mark.parametrize(("given", "expected"), [
    # Not hosts, and returned so that the caller's check rejects them, rather than cut down to a
    # host name that looks valid.
    ("http://", ""),
    ("http:/foo.example", "http:/foo.example"),
    ("foo.example/path", "foo.example/path"),
    ("example.com:http", "example.com:http"),
    ("1http://foo.example", "1http://foo.example"),
])
def test_normalize_host_keeps_non_hosts_invalid(given, expected):
    assert normalize_host(given) == expected
