"""Parse web server access logs (Apache and nginx) into LogRecord values.

The parser only reads text. Feeding records to the ingest pipeline is the
importer's job. Field values keep the server's own escapes: Apache writes
``\\"`` and ``\\xhh`` inside quoted fields and nginx writes ``\\xHH``. Decoding
those bytes would need the client's character set, which no log records.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LOG_FORMATS",
    "STATIC_EXTENSIONS",
    "CompiledLogFormat",
    "LogRecord",
    "MalformedLine",
    "UnreadableLog",
    "compile_log_format",
    "day_shift_to_today",
    "is_pageview",
    "parse_line",
    "read_log_lines",
    "request_path",
]


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One access log line, split into fields.

    ``method``, ``target`` and ``protocol`` are empty strings when the logged
    request line is not an HTTP request line. Examples are ``"-"`` for a
    connection that sent no request and the escaped bytes of a TLS handshake
    sent to a plain HTTP port. Such lines are records, not malformed lines,
    because the server logged them correctly. They are never pageviews.
    """

    line_number: int
    raw: str
    remote_addr: str
    remote_user: str | None
    time: datetime
    method: str
    target: str
    protocol: str
    status: int
    # None when the line logs "-" (Apache's %b writes "-" for an empty body)
    # or when the format has no body size field.
    body_bytes: int | None
    referrer: str | None
    user_agent: str | None
    vhost: str | None


class MalformedLine(ValueError):
    """A log line that does not match its log format."""

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason

    def __reduce__(self):
        # The default pickling calls the class with self.args, which contains
        # the formatted message instead of the two constructor arguments.
        return (type(self), (self.line_number, self.reason))


# Format strings in Apache LogFormat syntax. The nginx "combined" format
# writes the same line shape, so "combined" parses nginx logs too.
# NOTE: Debian's and Ubuntu's apache2.conf define "combined" with %O (bytes
# sent including headers) in place of %b. Such logs parse the same, but
# body_bytes then includes the header size.
LOG_FORMATS: dict[str, str] = {
    "combined": '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"',
    "common": '%h %l %u %t "%r" %>s %b',
    # As defined in Debian's and Ubuntu's apache2.conf. The size field is %O,
    # so records parsed with this format have body_bytes None.
    "vhost_combined": '%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"',
}


# --- Format strings -------------------------------------------------------

# Content of a double-quoted field. Apache escapes a quote inside a value as
# \" and nginx as \x22, so an unescaped quote ends the field.
# NOTE: nginx with escape=none writes quotes unescaped, which can end a field
# early and make the line fail to parse.
_QUOTED_CONTENT = r'[^"\\]*(?:\\.[^"\\]*)*'
_CLF_TIME = r"\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
_ISO_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)"
_TOKEN = r"\S+"


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str

    @property
    def regex(self) -> str:
        return re.escape(self.text)


@dataclass(frozen=True, slots=True)
class _Field:
    label: str  # the field as written in the format string, for messages
    key: str | None  # key in the parsed dict, None for fields not returned
    pattern: str  # regex for the value when it is not inside quotes
    quoted: bool = False
    prefix: str = ""  # literal text the directive itself writes, like %t's "["
    suffix: str = ""

    @property
    def regex(self) -> str:
        content = _QUOTED_CONTENT if self.quoted else self.pattern
        group = f"({content})" if self.key else f"(?:{content})"
        if self.quoted:
            group = f'"{group}"'
        return re.escape(self.prefix) + group + re.escape(self.suffix)


_Element = _Literal | _Field

# nginx variables with a fixed meaning. Variables not listed here are
# returned under their own name and match any run of non-space characters.
_NGINX_FIELDS: dict[str, tuple[str, str]] = {
    "remote_addr": ("remote_addr", _TOKEN),
    "realip_remote_addr": ("remote_addr", _TOKEN),
    "remote_user": ("remote_user", _TOKEN),
    "time_local": ("time_local", _CLF_TIME),
    "time_iso8601": ("time_iso8601", _ISO_TIME),
    "request": ("request", _TOKEN),
    "status": ("status", r"\d{3}"),
    "body_bytes_sent": ("body_bytes", r"\d+|-"),
    "http_referer": ("referrer", _TOKEN),
    "http_user_agent": ("user_agent", _TOKEN),
    "host": ("vhost", _TOKEN),
    "server_name": ("vhost", _TOKEN),
    "server_port": ("port", r"\d+"),
    "request_method": ("method", _TOKEN),
    "request_uri": ("target", _TOKEN),
    "uri": ("path", _TOKEN),
    "args": ("args", _TOKEN),
    "query_string": ("args", _TOKEN),
    "server_protocol": ("protocol", _TOKEN),
}

_NGINX_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")

# Apache mod_log_config directives by letter, as (key, pattern). A key of
# None means the field is matched but not returned. %t and %i are handled
# separately because they depend on the {argument}.
_APACHE_FIELDS: dict[str, tuple[str | None, str]] = {
    "a": ("remote_addr", _TOKEN),
    "h": ("remote_addr", _TOKEN),
    "l": (None, _TOKEN),
    "u": ("remote_user", _TOKEN),
    "r": ("request", _TOKEN),
    "s": ("status", r"\d{3}"),
    "b": ("body_bytes", r"\d+|-"),
    "B": ("body_bytes", r"\d+"),
    "O": ("bytes_sent", r"\d+|-"),
    "I": ("bytes_received", r"\d+|-"),
    "S": ("bytes_transferred", r"\d+|-"),
    "v": ("vhost", _TOKEN),
    "V": ("vhost", _TOKEN),
    "p": ("port", r"\d+"),
    "m": ("method", _TOKEN),
    "U": ("path", _TOKEN),
    "q": ("query", r"\S*"),  # "?" plus the query string, or nothing
    "H": ("protocol", _TOKEN),
}
# Other directives of Apache 2.4's mod_log_config, mod_logio (%^FB, %^FU)
# and mod_ssl (%c, %x).
_APACHE_UNRETURNED = set("ACDefkLnoPRTXcx") | {"^ti", "^to", "^FB", "^FU"}

_APACHE_DIRECTIVE = re.compile(
    r"%(?P<modifiers>[!<>,0-9]*)(?:\{(?P<argument>[^}]*)\})?(?P<letter>\^(?:t[io]|F[BU])|[A-Za-z%])"
)
# Escapes that mod_log_config decodes in literal text, plus \" which the
# Apache config parser decodes inside the quoted LogFormat argument.
_APACHE_LITERAL_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", '"': '"'}


def _nginx_elements(spec: str) -> list[_Element]:
    elements: list[_Element] = []
    position = 0
    for match in _NGINX_VARIABLE.finditer(spec):
        elements.append(_Literal(spec[position : match.start()]))
        name = match.group(1) or match.group(2)
        key, pattern = _NGINX_FIELDS.get(name, (name, _TOKEN))
        elements.append(_Field(match.group(0), key, pattern))
        position = match.end()
    elements.append(_Literal(spec[position:]))
    return elements


def _apache_literal(text: str) -> str:
    # Apache copies a backslash before any other character unchanged.
    return re.sub(r"\\(.)", lambda m: _APACHE_LITERAL_ESCAPES.get(m.group(1), m.group(0)), text)


def _apache_field(match: re.Match[str]) -> _Field:
    label = match.group(0)
    letter = match.group("letter")
    argument = match.group("argument")
    # A status-code condition makes Apache write "-" whenever it fails.
    conditional = any(c.isdigit() for c in match.group("modifiers"))

    if letter == "t":
        if argument is not None:
            raise ValueError(
                f"unsupported Apache directive {label}: only the plain %t time format can be parsed"
            )
        return _Field(label, "time_local", _CLF_TIME, prefix="[", suffix="]")
    if letter == "i":
        if not argument:
            raise ValueError(f"Apache directive {label} needs a header name, as in %{{Referer}}i")
        key = _header_key(argument)
        pattern = _TOKEN
    elif letter in _APACHE_FIELDS:
        key, pattern = _APACHE_FIELDS[letter]
    elif letter in _APACHE_UNRETURNED:
        key, pattern = None, _TOKEN
    else:
        raise ValueError(f"unknown Apache log directive {label}")

    if conditional:
        pattern = f"{pattern}|-"
    return _Field(label, key, pattern)


def _header_key(header: str) -> str:
    name = header.strip().lower().replace("-", "_")
    if name == "referer":
        return "referrer"
    if name == "user_agent":
        return "user_agent"
    return "http_" + name


def _apache_elements(spec: str) -> list[_Element]:
    elements: list[_Element] = []
    position = 0
    for match in _APACHE_DIRECTIVE.finditer(spec):
        literal = _apache_literal(spec[position : match.start()])
        if match.group("letter") == "%":
            literal += "%"
            elements.append(_Literal(literal))
        else:
            elements.append(_Literal(literal))
            elements.append(_apache_field(match))
        position = match.end()
    elements.append(_Literal(_apache_literal(spec[position:])))
    return elements


def _detect_syntax(spec: str) -> str:
    nginx = _NGINX_VARIABLE.search(spec) is not None
    apache = any(m.group("letter") != "%" for m in _APACHE_DIRECTIVE.finditer(spec))
    if nginx and apache:
        raise ValueError(
            f"log format {spec!r} contains both nginx $variables and Apache %directives; "
            "pass syntax='nginx' or syntax='apache'"
        )
    if nginx:
        return "nginx"
    if apache:
        return "apache"
    raise ValueError(f"log format {spec!r} contains no nginx $variable and no Apache %directive")


def _finish_elements(elements: list[_Element]) -> list[_Element]:
    """Merge adjacent literals, mark quoted fields and drop duplicate keys.

    A field counts as quoted when the text on both sides of it is a double
    quote. The quotes then move into the field, so a diagnostic can tell a
    missing closing quote from other mismatches.
    """
    merged: list[_Element] = []
    for element in elements:
        if isinstance(element, _Literal):
            if not element.text:
                continue
            if merged and isinstance(merged[-1], _Literal):
                merged[-1] = _Literal(merged[-1].text + element.text)
                continue
        merged.append(element)

    seen_keys: set[str] = set()
    for index, element in enumerate(merged):
        if not isinstance(element, _Field):
            continue
        # The first field with a key wins. Apache's %h and %a both mean the
        # client address, and a format may log both.
        key = element.key if element.key not in seen_keys else None
        if key:
            seen_keys.add(key)
        before = merged[index - 1] if index > 0 else None
        after = merged[index + 1] if index + 1 < len(merged) else None
        quoted = (
            isinstance(before, _Literal)
            and before.text.endswith('"')
            and isinstance(after, _Literal)
            and after.text.startswith('"')
            and not element.prefix
        )
        if quoted:
            merged[index - 1] = _Literal(before.text[:-1])
            merged[index + 1] = _Literal(after.text[1:])
        merged[index] = _Field(element.label, key, element.pattern, quoted, element.prefix, element.suffix)

    return [e for e in merged if not (isinstance(e, _Literal) and not e.text)]


class CompiledLogFormat:
    """A log format compiled to one regex: call it with a line to get a dict.

    The dict maps field keys (``remote_addr``, ``time_local``, ``request``,
    ``status``, ``referrer``, ``user_agent``, ``http_<header>`` and so on) to
    the logged text, and ``keys`` lists them in line order. A line that does
    not match raises ValueError whose message names the first field that
    failed and its column.
    """

    def __init__(self, spec: str, syntax: str, elements: list[_Element]) -> None:
        self.spec = spec
        self.syntax = syntax
        self._elements = tuple(elements)
        self.keys = tuple(e.key for e in elements if isinstance(e, _Field) and e.key)
        self._pattern = re.compile("".join(e.regex for e in elements), re.DOTALL)
        self._prefix_patterns: dict[int, re.Pattern[str]] = {}

    def __repr__(self) -> str:
        return f"CompiledLogFormat({self.spec!r}, syntax={self.syntax!r})"

    def __call__(self, line: str) -> dict[str, str]:
        match = self._pattern.fullmatch(line)
        if match is None:
            raise ValueError(self._explain_mismatch(line))
        return dict(zip(self.keys, match.groups()))

    def _explain_mismatch(self, line: str) -> str:
        # NOTE: this names the first element that no prefix of the format
        # matches. Backtracking can make a different element the real cause,
        # as when a missing closing quote lets a field run into the next one.
        if not line:
            return "the line is empty"
        position = 0
        for count, element in enumerate(self._elements, start=1):
            match = self._prefix_pattern(count).match(line)
            if match is None:
                return _describe_failure(element, line, position)
            position = match.end()
        return f"unexpected text after the last field at column {position + 1}: {_excerpt(line, position)}"

    def _prefix_pattern(self, count: int) -> re.Pattern[str]:
        if count not in self._prefix_patterns:
            regex = "".join(e.regex for e in self._elements[:count])
            self._prefix_patterns[count] = re.compile(regex, re.DOTALL)
        return self._prefix_patterns[count]


def _excerpt(line: str, position: int) -> str:
    rest = line[position : position + 40]
    return repr(rest) if rest else "end of line"


def _describe_failure(element: _Element, line: str, position: int) -> str:
    column = position + 1
    found = _excerpt(line, position)
    if isinstance(element, _Literal):
        return f"expected {element.text!r} at column {column} but found {found}"
    if element.quoted:
        if not line.startswith('"', position):
            return f"expected the opening quote of {element.label} at column {column} but found {found}"
        if re.match('"' + _QUOTED_CONTENT + '"', line[position:]) is None:
            return f"the quoted field {element.label} starting at column {column} has no closing quote"
    return f"invalid value for {element.label} at column {column}: {found}"


def compile_log_format(spec: str, *, syntax: str | None = None) -> CompiledLogFormat:
    """Compile an nginx ``log_format`` or Apache ``LogFormat`` string.

    ``syntax`` is "nginx" or "apache". By default it is taken from the
    string: ``$name`` means nginx and ``%x`` means Apache. Apache strings
    may keep the ``\\"`` escapes they have inside httpd.conf. Raises
    ValueError for an unknown or unsupported directive.
    """
    if syntax is None:
        syntax = _detect_syntax(spec)
    if syntax == "nginx":
        elements = _nginx_elements(spec)
    elif syntax == "apache":
        elements = _apache_elements(spec)
    else:
        raise ValueError(f"unknown log format syntax {syntax!r}; expected 'nginx' or 'apache'")
    return CompiledLogFormat(spec, syntax, _finish_elements(elements))


# --- Records --------------------------------------------------------------

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_CLF_TIME_PARTS = re.compile(
    r"(\d{2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)
_REQUEST_LINE = re.compile(
    r"(?P<method>[!#$%&'*+.^_`|~0-9A-Za-z-]+) (?P<target>\S+(?: \S+)*?)(?: (?P<protocol>HTTP/\d+(?:\.\d+)?))?"
)
_timezones: dict[str, timezone] = {}


def _offset_timezone(sign: str, hours: str, minutes: str) -> timezone:
    text = sign + hours + minutes
    if text not in _timezones:
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        _timezones[text] = timezone(-offset if sign == "-" else offset)
    return _timezones[text]


def _parse_clf_time(text: str) -> datetime:
    """Parse Apache's ``%t`` time, ``17/May/2015:10:05:03 +0000``.

    Month names are matched here, not with strptime's ``%b``, because ``%b``
    follows the process locale while Apache and nginx write English names.
    """
    match = _CLF_TIME_PARTS.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid timestamp {text!r}")
    day, month_name, year, hour, minute, second, sign, offset_hours, offset_minutes = match.groups()
    month = _MONTHS.get(month_name.lower())
    if month is None:
        raise ValueError(f"invalid month {month_name!r} in timestamp {text!r}")
    if int(offset_hours) > 23 or int(offset_minutes) > 59:
        raise ValueError(f"invalid UTC offset in timestamp {text!r}")
    tz = _offset_timezone(sign, offset_hours, offset_minutes)
    try:
        return datetime(int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError as error:
        raise ValueError(f"invalid timestamp {text!r}: {error}") from None


def _parse_iso_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return parsed


def _split_request(request: str) -> tuple[str, str, str]:
    # HTTP/0.9 request lines have no protocol, so protocol may be empty.
    match = _REQUEST_LINE.fullmatch(request)
    if match is None:
        return "", "", ""
    return match["method"], match["target"], match["protocol"] or ""


def _request_parts(fields: dict[str, str]) -> tuple[str, str, str]:
    if "request" in fields:
        return _split_request(fields["request"])
    method = fields["method"]
    protocol = fields.get("protocol", "")
    if "target" in fields:
        return method, fields["target"], protocol
    target = fields["path"]
    if fields.get("query"):
        target += fields["query"]
    elif fields.get("args", "-") != "-":
        target += "?" + fields["args"]
    return method, target, protocol


def _dash_to_none(value: str | None) -> str | None:
    return None if value is None or value == "-" else value


def _build_record(fields: dict[str, str], line: str, line_number: int) -> LogRecord:
    if "time_local" in fields:
        time = _parse_clf_time(fields["time_local"])
    else:
        time = _parse_iso_time(fields["time_iso8601"])

    status_text = fields["status"]
    if not (len(status_text) == 3 and status_text.isdigit()):
        raise ValueError(f"invalid status {status_text!r}")

    body_text = fields.get("body_bytes", "-")
    if body_text != "-" and not body_text.isdigit():
        raise ValueError(f"invalid body size {body_text!r}")

    method, target, protocol = _request_parts(fields)
    return LogRecord(
        line_number=line_number,
        raw=line,
        remote_addr=fields["remote_addr"],
        remote_user=_dash_to_none(fields.get("remote_user")),
        time=time,
        method=method,
        target=target,
        protocol=protocol,
        status=int(status_text),
        body_bytes=None if body_text == "-" else int(body_text),
        referrer=_dash_to_none(fields.get("referrer")),
        user_agent=_dash_to_none(fields.get("user_agent")),
        vhost=_dash_to_none(fields.get("vhost")),
    )


def _check_record_fields(log_format: CompiledLogFormat) -> None:
    keys = set(log_format.keys)
    missing = []
    if "remote_addr" not in keys:
        missing.append("the client address ($remote_addr, %h or %a)")
    if not keys & {"time_local", "time_iso8601"}:
        missing.append("the time ($time_local, $time_iso8601 or %t)")
    if "status" not in keys:
        missing.append("the status ($status or %>s)")
    has_request_parts = "method" in keys and keys & {"target", "path"}
    if "request" not in keys and not has_request_parts:
        missing.append("the request line ($request or %r)")
    if missing:
        raise ValueError(f"log format {log_format.spec!r} lacks " + ", ".join(missing))


@lru_cache(maxsize=32)
def _record_format(fmt: str) -> CompiledLogFormat:
    spec = LOG_FORMATS.get(fmt)
    if spec is None:
        if "$" not in fmt and "%" not in fmt:
            names = ", ".join(LOG_FORMATS)
            raise ValueError(f"unknown log format {fmt!r}; expected one of {names} or a format string")
        spec = fmt
    log_format = compile_log_format(spec)
    _check_record_fields(log_format)
    return log_format


def parse_line(line: str, line_number: int, fmt: str = "combined") -> LogRecord:
    """Parse one access log line into a LogRecord.

    ``fmt`` is a name from LOG_FORMATS or a format string that
    compile_log_format accepts. A trailing LF or CRLF is removed. Raises
    MalformedLine when the line does not match, and ValueError when ``fmt``
    is unknown or lacks a field that LogRecord requires.
    """
    log_format = _record_format(fmt)
    line = line.rstrip("\r\n")
    try:
        fields = log_format(line)
        return _build_record(fields, line, line_number)
    except ValueError as error:
        raise MalformedLine(line_number, str(error)) from None


# --- Files ----------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"


class UnreadableLog(Exception):
    """An error for a gzip log whose data ends early or is corrupt at line `line`.

    The lines before `line` were read. Line `line` itself is lost, because a line cut short
    cannot be distinguished from a whole one. Readers attach their result for the lines
    before, such as an import's summary, as `partial`.
    """

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason
        self.partial = None

    def __str__(self) -> str:
        return f"{self.path} is truncated or corrupt at line {self.line} ({self.reason})"


class CorruptLog(UnreadableLog):
    """An error for a gzip log whose data is corrupt somewhere, found before any line was read.

    gzip checks its CRC only at the end of a member, so lines decoded before corrupt data may
    already be garbled, and none are read. Truncation alone is not corruption: the data before
    the cut is sound, and UnreadableLog reports it after those lines.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, 1, reason)

    def __str__(self) -> str:
        return (f"{self.path} is corrupt ({self.reason}), so none of its lines were read: lines decoded "
                "before the damage may be garbled")


def _check_gzip(path: Path, raw: BinaryIO) -> None:
    """Decompress all of `raw` and rewind it; raise CorruptLog for corrupt data, but not for a cut."""
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            while stream.read(1 << 20):
                pass
    except EOFError:
        pass
    except (gzip.BadGzipFile, zlib.error) as error:
        raise CorruptLog(path, str(error) or error.__class__.__name__) from None
    finally:
        raw.seek(0)


def read_log_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a plain or gzip file.

    Gzip is detected by its magic bytes, because rotated logs are often
    renamed. Lines end at LF only (a lone CR inside a user agent stays), and
    one trailing CR is removed. Bytes are decoded as UTF-8 with
    errors="replace": servers write request bytes from clients, which need
    not be UTF-8, and one bad byte should not stop an import. A gzip file
    that ends early raises UnreadableLog after yielding the lines before the
    cut; one with corrupt data raises CorruptLog before yielding any line.
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if compressed:
            # A second decompression, which costs little next to parsing the lines (an estimate, not measured).
            _check_gzip(path, raw)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        line_number = 0
        try:
            for line_number, chunk in enumerate(stream, start=1):
                if chunk.endswith(b"\n"):
                    chunk = chunk[:-1]
                if chunk.endswith(b"\r"):
                    chunk = chunk[:-1]
                yield line_number, chunk.decode("utf-8", errors="replace")
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            # Only the decompressor raises these, because a plain file has no end marker to miss.
            raise UnreadableLog(path, line_number + 1, str(error) or error.__class__.__name__) from None


# --- Pageviews ------------------------------------------------------------

STATIC_EXTENSIONS = frozenset(
    "css js mjs map png jpg jpeg gif ico svg webp avif bmp woff woff2 ttf otf eot "
    "mp3 mp4 webm ogg wav txt xml json".split()
)

_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def request_path(record: LogRecord) -> str:
    """Return the path and query of the request target as sent.

    An absolute-form target (``http://host/x?q``, sent to proxies) gives
    ``/x?q``. Other targets, such as ``*`` or ``host:443``, come back
    unchanged, and an unparsable request line gives "".
    """
    target = record.target
    match = _ABSOLUTE_FORM.match(target)
    if match is None:
        return target
    rest = target[match.end() :]
    return rest if rest.startswith("/") else "/" + rest


def is_pageview(record: LogRecord) -> bool:
    """Return whether the record is a pageview.

    A pageview is a GET request with a response status from 200 to 399 whose
    path (the part before "?") does not end in a static file extension. The
    extension is that of the last path segment, compared case-insensitively.
    """
    if record.method != "GET" or not 200 <= record.status <= 399:
        return False
    path = request_path(record).split("?", 1)[0]
    segment = path.rsplit("/", 1)[-1]
    _, dot, extension = segment.rpartition(".")
    return not (dot and extension.lower() in STATIC_EXTENSIONS)


def day_shift_to_today(newest: datetime, today: date) -> timedelta:
    """Return the whole number of days that moves ``newest``'s UTC date to ``today``.

    Adding the result to every time in a log moves the log so that its
    newest line falls on ``today`` in UTC. Raises ValueError for a naive
    datetime, whose UTC date is unknown.
    """
    if newest.tzinfo is None or newest.utcoffset() is None:
        raise ValueError(f"newest time {newest.isoformat()} has no UTC offset")
    newest_date = newest.astimezone(timezone.utc).date()
    return timedelta(days=(today - newest_date).days)
