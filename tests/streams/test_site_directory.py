"""normalize_host, which every reader of a site name uses: the collector, `weir site add`,
`weir import-logs`, the API and the live feed; and host_name_problem, which says why a name
cannot be a site."""

from __future__ import annotations

import pytest

from streams.sites import host_name_problem, is_host_name, normalize_host


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
    # The host a browser reads, by the WHATWG URL Standard: in http, https and the other special
    # schemes, and in scheme-relative URLs, a backslash ends the host like a slash.
    ("https://ex.com\\@evil.example", "ex.com"),
    ("https://ex.com\\path", "ex.com"),
    ("https://ex.com:8443\\@evil.example/", "ex.com"),
    ("http://ex.com\\", "ex.com"),
    ("//ex.com\\@evil.example", "ex.com"),
    ("wss://ex.com\\@evil.example", "ex.com"),
    ("https://user@ex.com\\@evil.example", "ex.com"),
    ("https://user:secret@ex.com\\x", "ex.com"),
    # The last "@" before the end of the host ends the user name and password.
    ("https://a@b@ex.com/", "ex.com"),
    ("https://evil.example@ex.com/", "ex.com"),
    ("https://ex.com/@evil.example", "ex.com"),
    ("https://ex.com?@evil.example", "ex.com"),
    ("https://ex.com#@evil.example", "ex.com"),
    # A browser removes tabs and newlines before it reads a URL.
    ("https://ex.\ncom/", "ex.com"),
    ("ht\ttps://ex.com\t\\@evil.example", "ex.com"),
    # In a scheme that is not special, a backslash is part of the authority.
    ("android-app://user\\@com.example.app/", "com.example.app"),
])
def test_normalize_host_reads_url_as_browser(given, expected):
    assert normalize_host(given) == expected


@pytest.mark.parametrize(("given", "expected"), [
    # Not hosts, and returned so that the caller's check rejects them, rather than cut down to a
    # host name that looks valid.
    ("http://", ""),
    ("http:/foo.example", "http:/foo.example"),
    ("foo.example/path", "foo.example/path"),
    ("example.com:http", "example.com:http"),
    ("1http://foo.example", "1http://foo.example"),
    # A browser finds no valid URL here: the host ends at the backslash, before the "@", so
    # `user:p` would be a host with the port `p`.
    ("https://user:p\\w@ex.com/", "user:p"),
])
def test_normalize_host_keeps_non_hosts_invalid(given, expected):
    assert normalize_host(given) == expected


@pytest.mark.parametrize(("host", "problem"), [
    ("mailto:x@example.com", "it contains ':' '@', but a host name has only ASCII letters, digits, hyphens and dots"),
    ("bücher.example", "it contains 'ü', but a host name has only ASCII letters, digits, hyphens and dots, so "
                       "write an internationalised name in its xn-- form"),
    ("[::1]", "it contains ':' '[' ']', but a host name has only ASCII letters, digits, hyphens and dots"),
    ("a_b.example", "it contains '_', but a host name has only ASCII letters, digits, hyphens and dots"),
    ("a..example", "it has an empty label: two dots in a row, or a dot at the start"),
    (".example", "it has an empty label: two dots in a row, or a dot at the start"),
    ("-a.example", "its label '-a' starts or ends with a hyphen"),
    ("a-.example", "its label 'a-' starts or ends with a hyphen"),
    ("a" * 64 + ".example", f"its label {'a' * 20!r}... is longer than 63 characters"),
    ("a." * 127, "it is longer than 253 characters"),
    ("", "it contains no host name"),
])
def test_host_name_problem_names_it(host, problem):
    assert host_name_problem(host) == problem
    assert not is_host_name(host)


@pytest.mark.parametrize("host", ["example.com", "xn--bcher-kva.example", "a-b.example", "localhost", "a" * 63])
def test_host_name_problem_none_for_host(host):
    assert host_name_problem(host) is None
    assert is_host_name(host)
