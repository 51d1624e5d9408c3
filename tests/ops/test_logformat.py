"""Tests for ops.logformat against a real Apache log and hand-written lines."""

from __future__ import annotations

import collections
import gzip
import pickle
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.logformat import (
    LOG_FORMATS,
    STATIC_EXTENSIONS,
    LogRecord,
    MalformedLine,
    compile_log_format,
    day_shift_to_today,
    is_pageview,
    parse_line,
    read_log_lines,
    request_path,
)

REAL_LOG = Path(__file__).parents[1] / "data" / "access-logs" / "apache_combined.log"

SAMPLE = (
    '203.0.113.9 - alice [10/Oct/2023:13:55:36 -0700] "GET /blog/?utm_source=x HTTP/1.1" '
    '200 2326 "https://example.org/start" "Mozilla/5.0 (X11; Linux x86_64)"'
)


def parse_file(path: Path) -> tuple[list[LogRecord], list[MalformedLine]]:
    records: list[LogRecord] = []
    errors: list[MalformedLine] = []
    for line_number, line in read_log_lines(path):
        try:
            records.append(parse_line(line, line_number))
        except MalformedLine as error:
            errors.append(error)
    return records, errors


@pytest.fixture(scope="module")
def real_log() -> tuple[list[LogRecord], list[MalformedLine]]:
    return parse_file(REAL_LOG)


def make_record(method: str = "GET", target: str = "/", status: int = 200) -> LogRecord:
    return LogRecord(
        line_number=1,
        raw="",
        remote_addr="203.0.113.9",
        remote_user=None,
        time=datetime(2023, 10, 10, tzinfo=timezone.utc),
        method=method,
        target=target,
        protocol="HTTP/1.1",
        status=status,
        body_bytes=None,
        referrer=None,
        user_agent=None,
        vhost=None,
    )


# --- The real log -----------------------------------------------------------


def test_real_log_line_count():
    assert sum(1 for _ in read_log_lines(REAL_LOG)) == 10_000


def test_real_log_parses_all_but_one(real_log):
    records, errors = real_log
    assert len(records) == 9_999
    assert len(errors) == 1


def test_real_log_line_8899_malformed(real_log):
    _, errors = real_log
    error = errors[0]
    assert error.line_number == 8899
    assert "line 8899" in str(error)
    line = dict(read_log_lines(REAL_LOG))[8899]
    column = line.rindex('"') + 1
    expected = f"the quoted field %{{User-Agent}}i starting at column {column} has no closing quote"
    assert error.reason == expected


def test_real_log_pageview_count(real_log):
    records, _ = real_log
    assert sum(1 for record in records if is_pageview(record)) == 4_173


def test_real_log_status_counts(real_log):
    records, _ = real_log
    counts = collections.Counter(record.status for record in records)
    assert counts == {200: 9_125, 304: 445, 404: 213, 301: 164, 206: 45, 500: 3, 403: 2, 416: 2}


def test_real_log_method_counts(real_log):
    records, _ = real_log
    counts = collections.Counter(record.method for record in records)
    assert counts == {"GET": 9_951, "HEAD": 42, "POST": 5, "OPTIONS": 1}


def test_real_log_times(real_log):
    records, _ = real_log
    assert all(record.time.utcoffset() == timedelta(0) for record in records)
    assert min(record.time for record in records) == datetime(2015, 5, 17, 10, 5, 0, tzinfo=timezone.utc)
    assert max(record.time for record in records) == datetime(2015, 5, 20, 21, 5, 59, tzinfo=timezone.utc)
    per_day = collections.Counter(record.time.date() for record in records)
    # Line 8899, the malformed one, is from 20 May.
    assert per_day == {
        date(2015, 5, 17): 1_632,
        date(2015, 5, 18): 2_893,
        date(2015, 5, 19): 2_896,
        date(2015, 5, 20): 2_578,
    }


def test_real_log_first_record(real_log):
    records, _ = real_log
    first = records[0]
    assert first.line_number == 1
    assert first.remote_addr == "83.149.9.216"
    assert first.remote_user is None
    assert first.method == "GET"
    assert first.target == "/presentations/logstash-monitorama-2013/images/kibana-search.png"
    assert first.protocol == "HTTP/1.1"
    assert first.body_bytes == 203023
    assert first.referrer == "http://semicomplete.com/presentations/logstash-monitorama-2013/"
    assert first.user_agent.startswith("Mozilla/5.0 (Macintosh")
    assert first.vhost is None
    assert first.raw.startswith("83.149.9.216 - - [17/May/2015:10:05:03 +0000]")


def test_real_log_dash_fields(real_log):
    records, _ = real_log
    assert sum(1 for record in records if record.user_agent is None) == 190
    assert sum(1 for record in records if record.body_bytes is None) == 669


def test_real_log_gzip_copy(real_log, tmp_path):
    # The name has no .gz suffix, so only the magic bytes reveal the gzip.
    copy = tmp_path / "access.log.1"
    copy.write_bytes(gzip.compress(REAL_LOG.read_bytes()))
    records, errors = parse_file(copy)
    plain_records, _ = real_log
    assert records == plain_records
    assert [error.line_number for error in errors] == [8899]
    assert sum(1 for record in records if is_pageview(record)) == 4_173


# --- Reading files ------------------------------------------------------------


def test_read_plain_file_named_gz(tmp_path):
    path = tmp_path / "access.log.gz"
    path.write_bytes(b"first\nsecond\n")
    assert list(read_log_lines(path)) == [(1, "first"), (2, "second")]


def test_read_crlf_and_unterminated_line(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(SAMPLE.encode() + b"\r\n" + SAMPLE.encode())
    lines = list(read_log_lines(path))
    assert lines == [(1, SAMPLE), (2, SAMPLE)]


def test_read_keeps_lone_cr(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"a\rb\n")
    assert list(read_log_lines(path)) == [(1, "a\rb")]


def test_read_replaces_invalid_utf8(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"caf\xe9\n")
    assert list(read_log_lines(path)) == [(1, "caf\ufffd")]


def test_read_concatenated_gzip_members(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(gzip.compress(b"one\n") + gzip.compress(b"two\n"))
    assert list(read_log_lines(path)) == [(1, "one"), (2, "two")]


# --- Single lines -------------------------------------------------------------


def test_parse_sample_line():
    record = parse_line(SAMPLE, 7)
    assert record.line_number == 7
    assert record.raw == SAMPLE
    assert record.remote_addr == "203.0.113.9"
    assert record.remote_user == "alice"
    assert record.time == datetime(2023, 10, 10, 13, 55, 36, tzinfo=timezone(timedelta(hours=-7)))
    assert record.time.utcoffset() == timedelta(hours=-7)
    assert record.method == "GET"
    assert record.target == "/blog/?utm_source=x"
    assert record.protocol == "HTTP/1.1"
    assert record.status == 200
    assert record.body_bytes == 2326
    assert record.referrer == "https://example.org/start"
    assert record.user_agent == "Mozilla/5.0 (X11; Linux x86_64)"
    assert record.vhost is None


def test_parse_line_crlf():
    record = parse_line(SAMPLE + "\r\n", 1)
    assert record.raw == SAMPLE
    assert record.user_agent == "Mozilla/5.0 (X11; Linux x86_64)"


def test_parse_ipv6_remote_addr():
    line = SAMPLE.replace("203.0.113.9", "2001:db8::1f")
    record = parse_line(line, 1)
    assert record.remote_addr == "2001:db8::1f"


def test_parse_percent_encoding_and_query():
    line = SAMPLE.replace("/blog/?utm_source=x", "/search/caf%C3%A9%20bar?q=a%2Bb&page=2")
    record = parse_line(line, 1)
    assert record.target == "/search/caf%C3%A9%20bar?q=a%2Bb&page=2"
    assert request_path(record) == "/search/caf%C3%A9%20bar?q=a%2Bb&page=2"
    assert is_pageview(record)


def test_parse_common_format():
    line = '198.51.100.4 - - [01/Jan/2024:00:00:00 +0100] "HEAD / HTTP/1.0" 304 -'
    record = parse_line(line, 1, "common")
    assert record.method == "HEAD"
    assert record.status == 304
    assert record.body_bytes is None
    assert record.referrer is None
    assert record.user_agent is None
    assert record.time == datetime(2023, 12, 31, 23, 0, tzinfo=timezone.utc)


def test_parse_vhost_combined():
    line = (
        'www.example.org:443 2001:db8::2 - - [05/Mar/2024:08:01:02 +0000] "GET /about HTTP/2.0" '
        '200 5120 "-" "curl/8.5.0"'
    )
    record = parse_line(line, 3, "vhost_combined")
    assert record.vhost == "www.example.org"
    assert record.remote_addr == "2001:db8::2"
    assert record.target == "/about"
    assert record.protocol == "HTTP/2.0"
    assert record.status == 200
    # vhost_combined logs %O, the bytes sent including headers, not the body size.
    assert record.body_bytes is None
    assert record.referrer is None
    assert record.user_agent == "curl/8.5.0"


def test_parse_escaped_quote_in_user_agent():
    line = SAMPLE.replace("(X11; Linux x86_64)", 'say \\"hi\\"')
    record = parse_line(line, 1)
    assert record.user_agent == 'Mozilla/5.0 say \\"hi\\"'


@pytest.mark.parametrize(
    "request_line",
    ["-", "", "\\x16\\x03\\x01\\x02\\x00\\x01", "GET"],
)
def test_unparsable_request_line_not_pageview(request_line):
    line = SAMPLE.replace("GET /blog/?utm_source=x HTTP/1.1", request_line).replace(" 200 ", " 400 ")
    record = parse_line(line, 1)
    assert record.method == ""
    assert record.target == ""
    assert record.protocol == ""
    assert record.status == 400
    assert request_path(record) == ""
    assert not is_pageview(record)


def test_unparsable_request_200_not_pageview():
    line = SAMPLE.replace("GET /blog/?utm_source=x HTTP/1.1", "-")
    assert not is_pageview(parse_line(line, 1))


def test_http09_request_line():
    line = SAMPLE.replace("GET /blog/?utm_source=x HTTP/1.1", "GET /old")
    record = parse_line(line, 1)
    assert record.method == "GET"
    assert record.target == "/old"
    assert record.protocol == ""


@pytest.mark.parametrize(
    ("line", "reason_part"),
    [
        ("", "empty"),
        ("garbage", "expected ' ' at column 8 but found end of line"),
        (SAMPLE.replace("200 2326", "2OO 2326"), "invalid value for %>s"),
        (SAMPLE.replace("[10/Oct/2023", "[10/Foo/2023"), "invalid month"),
        (SAMPLE.replace("[10/Oct/2023", "[31/Feb/2023"), "invalid timestamp"),
        (SAMPLE + " extra", "unexpected text after the last field"),
        (SAMPLE[:-1], "the quoted field %{User-Agent}i starting at column 122 has no closing quote"),
    ],
)
def test_malformed_line_reasons(line, reason_part):
    with pytest.raises(MalformedLine) as caught:
        parse_line(line, 42)
    assert caught.value.line_number == 42
    assert reason_part in caught.value.reason
    assert str(caught.value).startswith("line 42: ")


@given(st.text(max_size=300))
def test_parse_line_raises_only_malformed_line(line):
    try:
        parse_line(line, 1)
    except MalformedLine as error:
        assert error.line_number == 1


@given(st.text(max_size=200))
def test_parse_line_any_user_agent_text(text):
    # Whatever the user agent contains, escaping quotes and backslashes the
    # way Apache does keeps the line parseable.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
    line = SAMPLE.replace("Mozilla/5.0 (X11; Linux x86_64)", escaped)
    record = parse_line(line, 1)
    assert record.user_agent == (escaped if escaped != "-" else None)


def test_malformed_line_names_column():
    line = SAMPLE.replace("200 2326", "2OO 2326")
    with pytest.raises(MalformedLine) as caught:
        parse_line(line, 1)
    column = line.index("2OO") + 1
    assert f"column {column}" in caught.value.reason


def test_malformed_line_pickles():
    error = MalformedLine(5, "the line is empty")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.line_number == 5
    assert copy.reason == "the line is empty"
    assert str(copy) == "line 5: the line is empty"


# --- Format strings -----------------------------------------------------------

NGINX_COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
APACHE_COMBINED = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"'


def test_compile_nginx_format():
    parse = compile_log_format(NGINX_COMBINED)
    assert parse.syntax == "nginx"
    fields = parse(SAMPLE)
    assert fields == {
        "remote_addr": "203.0.113.9",
        "remote_user": "alice",
        "time_local": "10/Oct/2023:13:55:36 -0700",
        "request": "GET /blog/?utm_source=x HTTP/1.1",
        "status": "200",
        "body_bytes": "2326",
        "referrer": "https://example.org/start",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
    }


def test_compile_apache_format():
    parse = compile_log_format(APACHE_COMBINED)
    assert parse.syntax == "apache"
    fields = parse(SAMPLE)
    assert fields["remote_addr"] == "203.0.113.9"
    assert fields["time_local"] == "10/Oct/2023:13:55:36 -0700"
    assert fields["request"] == "GET /blog/?utm_source=x HTTP/1.1"
    assert fields["user_agent"] == "Mozilla/5.0 (X11; Linux x86_64)"
    assert "l" not in fields


def test_compile_apache_format_with_config_escapes():
    escaped = APACHE_COMBINED.replace('"', '\\"')
    assert compile_log_format(escaped)(SAMPLE) == compile_log_format(APACHE_COMBINED)(SAMPLE)


def test_compile_rejects_mismatch_with_value_error():
    parse = compile_log_format(NGINX_COMBINED)
    with pytest.raises(ValueError, match="no closing quote"):
        parse(SAMPLE[:-1])


def test_parse_line_with_nginx_format_string():
    record = parse_line(SAMPLE, 1, NGINX_COMBINED)
    assert record == parse_line(SAMPLE, 1, "combined")


def test_parse_line_with_custom_nginx_format():
    spec = (
        '$host $remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
        '"$http_x_forwarded_for" $request_time'
    )
    line = 'shop.example 10.0.0.5 [2024-03-05T08:01:02+01:00] "GET /cart HTTP/1.1" 200 0 "198.51.100.7" 0.004'
    assert compile_log_format(spec)(line)["http_x_forwarded_for"] == "198.51.100.7"
    record = parse_line(line, 1, spec)
    assert record.vhost == "shop.example"
    assert record.time == datetime(2024, 3, 5, 7, 1, 2, tzinfo=timezone.utc)
    assert record.body_bytes == 0


def test_parse_line_with_request_parts():
    spec = '%a %t %m %U%q %H %>s'
    line = "192.0.2.1 [05/Mar/2024:08:01:02 +0000] GET /find?q=x HTTP/1.1 200"
    record = parse_line(line, 1, spec)
    assert record.method == "GET"
    assert record.target == "/find?q=x"
    assert record.protocol == "HTTP/1.1"
    assert record.body_bytes is None


def test_apache_unreturned_directives_match():
    parse = compile_log_format('%{c}a %t "%r" %>s %D %{SSL_PROTOCOL}x %^FB %{X-Request-Id}i')
    line = '192.0.2.1 [05/Mar/2024:08:01:02 +0000] "GET / HTTP/1.1" 200 1043 TLSv1.3 812 abc-123'
    fields = parse(line)
    assert fields["remote_addr"] == "192.0.2.1"
    assert fields["http_x_request_id"] == "abc-123"
    assert "D" not in fields
    assert set(fields) == {"remote_addr", "time_local", "request", "status", "http_x_request_id"}


def test_apache_conditional_field_allows_dash():
    parse = compile_log_format('%h %t "%r" %>s %!200,304{Referer}i')
    fields = parse('192.0.2.1 [05/Mar/2024:08:01:02 +0000] "GET / HTTP/1.1" 200 -')
    assert fields["referrer"] == "-"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("plain text", "no nginx $variable and no Apache %directive"),
        ("$remote_addr %h", "both nginx $variables and Apache %directives"),
        ("%h %{%Y}t", "unsupported Apache directive"),
        ("%h %Z", "unknown Apache log directive %Z"),
        ("%h %{}i", "needs a header name"),
    ],
)
def test_compile_rejects_bad_spec(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_log_format(spec)


def test_compile_explicit_syntax():
    parse = compile_log_format("$remote_addr 100%", syntax="nginx")
    assert parse("192.0.2.1 100%") == {"remote_addr": "192.0.2.1"}
    with pytest.raises(ValueError, match="unknown log format syntax"):
        compile_log_format("$remote_addr", syntax="caddy")


def test_parse_line_rejects_unknown_format_name():
    with pytest.raises(ValueError, match="unknown log format 'combind'"):
        parse_line(SAMPLE, 1, "combind")


def test_parse_line_rejects_format_without_time():
    with pytest.raises(ValueError, match="lacks the time"):
        parse_line(SAMPLE, 1, '%h "%r" %>s')


def test_log_formats_names():
    assert set(LOG_FORMATS) == {"combined", "common", "vhost_combined"}
    for spec in LOG_FORMATS.values():
        compile_log_format(spec)


# --- Pageviews ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status", "expected"),
    [
        ("HEAD", "/blog/", 200, False),
        ("POST", "/blog/", 200, False),
        ("GET", "/missing", 404, False),
        ("GET", "/a/b.CSS", 200, False),
        ("GET", "/feed.xml?x=1", 200, False),
        ("GET", "/blog/", 200, True),
        ("GET", "/blog/", 304, True),
        ("GET", "/moved", 301, True),
        ("GET", "/moved", 399, True),
        ("GET", "/page", 199, False),
        ("GET", "/page", 400, False),
        ("GET", "/report.pdf", 200, True),
        ("GET", "/page.html", 200, True),
        ("GET", "/page?file=x.css", 200, True),
        ("GET", "/assets.css/", 200, True),
        ("GET", "http://example.org/app.js?v=2", 200, False),
        ("GET", "http://example.org", 200, True),
    ],
)
def test_is_pageview(method, target, status, expected):
    assert is_pageview(make_record(method, target, status)) is expected


def test_static_extensions_are_lowercase():
    assert all(extension == extension.lower() for extension in STATIC_EXTENSIONS)
    assert {"css", "js", "xml", "woff2", "json"} <= STATIC_EXTENSIONS


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/x?y=1", "/x?y=1"),
        ("http://example.org/x?y=1", "/x?y=1"),
        ("https://example.org:8443/a/b", "/a/b"),
        ("http://example.org", "/"),
        ("http://example.org?q=1", "/?q=1"),
        ("http://[::1", "/"),
        ("*", "*"),
        ("example.org:443", "example.org:443"),
        ("", ""),
    ],
)
def test_request_path(target, expected):
    assert request_path(make_record(target=target)) == expected


@given(st.text(max_size=200))
def test_request_path_never_raises(target):
    assert isinstance(request_path(make_record(target=target)), str)


# --- Day shift ----------------------------------------------------------------


def test_day_shift_to_today_real_log(real_log):
    records, _ = real_log
    newest = max(record.time for record in records)
    shift = day_shift_to_today(newest, date(2024, 1, 10))
    assert shift == timedelta(days=3157)
    assert (newest + shift).date() == date(2024, 1, 10)


def test_day_shift_uses_utc_date():
    # 23:30 at -02:00 is already 21 May in UTC.
    newest = datetime(2015, 5, 20, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert day_shift_to_today(newest, date(2015, 5, 22)) == timedelta(days=1)


def test_day_shift_same_day_and_future():
    newest = datetime(2024, 1, 10, 12, 0, tzinfo=timezone.utc)
    assert day_shift_to_today(newest, date(2024, 1, 10)) == timedelta(0)
    assert day_shift_to_today(newest, date(2024, 1, 8)) == timedelta(days=-2)


def test_day_shift_rejects_naive_datetime():
    with pytest.raises(ValueError, match="no UTC offset"):
        day_shift_to_today(datetime(2024, 1, 10), date(2024, 1, 11))
