"""User-agent parsing into browser, OS and device type.

Browser and OS names come from ua-parser 1.x with the rules that the
ua-parser-builtins package ships. The device type is derived here from the
parsed device and OS and from a few tokens of the raw string.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import ua_parser
from ua_parser import Domain, Result

logger = logging.getLogger(__name__)

# Distinct user agents kept in the parse cache. An entry costs about 320 bytes
# plus the string (measured with tracemalloc on CPython 3.11), so with
# 150-character user agents a full cache takes an estimated 25 MB.
CACHE_SIZE = 50_000

# Characters of a user agent that are parsed; the rest is ignored. Parsing
# time grows with the length: measured with ua-parser-rs, about 1.5 ms per 1,000
# characters, in pure Python about 15 ms. The longest user agent in uap-core's
# test cases has 492 characters, so they are all parsed in full.
MAX_PARSED_CHARS = 512

UNKNOWN = "Unknown"

DESKTOP = "desktop"
MOBILE = "mobile"
TABLET = "tablet"
BOT = "bot"
OTHER = "other"

# TVs, game consoles, watches and headsets. Some of them run a desktop or
# mobile OS (Xbox runs Windows, Quest runs Android), so this check comes first.
_OTHER_DEVICE_PATTERN = re.compile(
    r"Xbox|PlayStation|Nintendo|Apple ?TV|Google ?TV|HbbTV|NetCast|Smart-?TV|WebTV|Roku"
    r"|CrKey|Apple Watch|\bQuest\b|\bGlass\b|\bTesla\b",
    re.IGNORECASE,
)

# Matched against ua-parser's device family and brand ("iPad", "Kindle Fire",
# "MI PAD", "Samsung Galaxy Tab", brand "Generic_Android_Tablet").
_TABLET_DEVICE_PATTERN = re.compile(
    r"iPad|Tablet|Kindle|MediaPad|\bPad\b|\bTab\b|PlayBook|TouchPad|Xoom|Nexus (?:7|9|10)\b",
    re.IGNORECASE,
)

# Tokens of the raw string: Firefox for Android writes "Tablet", the Kindle
# browser writes "Silk/".
_TABLET_TOKEN_PATTERN = re.compile(r"\bTablet\b|\biPad\b|\bSilk/|PlayBook", re.IGNORECASE)

# Phone browsers write "Mobi" ("Mobile", "Opera Mobi"). MIDP, J2ME, WAP and
# UP.Browser mark the Java ME and WAP browsers of feature phones.
_MOBILE_TOKEN_PATTERN = re.compile(r"Mobi|\bMIDP\b|\bJ2ME\b|\bWAP|\bUP\.Browser\b")

_MOBILE_DEVICE_FAMILIES = frozenset({"iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone"})

_MOBILE_OS_FAMILIES = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "Symbian OS",
        "Symbian^3",
        "Symbian^3 Anna",
        "Symbian^3 Belle",
        "Nokia Series 40",
        "Nokia Series 30 Plus",
        "Firefox OS",
        "KaiOS",
        "Bada",
        "BREW",
        "Brew MP",
        "Sailfish",
        "MeeGo",
        "Maemo",
        "HarmonyOS",
    }
)

_DESKTOP_OS_FAMILIES = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Mac OS",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "Mandriva",
        "Gentoo",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "BSD",
        "Solaris",
    }
)


@dataclass(frozen=True, slots=True)
class UserAgent:
    """Browser, OS and device type parsed from one User-Agent header.

    Versions are "major.minor", or only "major" when the string has no minor
    version, or "" when it has none. A string that no ua-parser rule matches
    gives the family "Other" as ua-parser names it, while a missing or empty
    header gives UNKNOWN.
    """

    browser: str
    browser_version: str
    os: str
    os_version: str
    device_type: str


# A missing header is a bot, the same rule that streams.bots applies.
_EMPTY = UserAgent(
    browser=UNKNOWN,
    browser_version="",
    os=UNKNOWN,
    os_version="",
    device_type=BOT,
)


def _build_resolver() -> ua_parser.Resolver:
    """Build the fastest ua-parser resolver whose package is installed.

    The order is ua-parser-rs (Rust regex engine), then google-re2, then the
    pure-Python resolver, which is slowest per string.
    """
    try:
        from ua_parser.regex import Resolver as RegexResolver
    except ImportError:
        pass
    else:
        return RegexResolver(ua_parser.load_lazy_builtins())

    try:
        from ua_parser.re2 import Resolver as Re2Resolver
    except ImportError:
        pass
    else:
        logger.info("ua-parser-rs is not installed, parsing user agents with google-re2")
        return Re2Resolver(ua_parser.load_lazy_builtins())

    logger.warning("ua-parser-rs and google-re2 are not installed, parsing user agents in pure Python")
    return ua_parser.BasicResolver(ua_parser.load_builtins())


@functools.cache
def _resolver() -> ua_parser.Resolver:
    return _build_resolver()


def _format_version(major: str | None, minor: str | None) -> str:
    if not major:
        return ""
    if not minor:
        return major
    return f"{major}.{minor}"


def _derive_device_type(result: Result) -> str:
    """Classify the device as one of "bot", "other", "tablet", "mobile", "desktop".

    NOTE: iPadOS 13 and later send the desktop Safari string by default, so
    those iPads come out as desktop. Android apps whose HTTP client sends
    neither "Mobi" nor "Dalvik/" come out as tablet.
    """
    ua = result.string
    device_family = result.device.family if result.device else ""
    device_brand = (result.device.brand or "") if result.device else ""
    os_family = result.os.family if result.os else ""

    if device_family == "Spider":
        return BOT
    if _OTHER_DEVICE_PATTERN.search(device_family) or _OTHER_DEVICE_PATTERN.search(ua):
        return OTHER

    if _TABLET_DEVICE_PATTERN.search(device_family) or _TABLET_DEVICE_PATTERN.search(device_brand):
        return TABLET
    if _TABLET_TOKEN_PATTERN.search(ua):
        return TABLET
    # Android tablet browsers leave "Mobile" out of the string and phone
    # browsers include it. Android's own HTTP client ("Dalvik/2.1.0 (Linux; U;
    # Android 11; ...)") includes neither, and falls through to mobile.
    if os_family == "Android" and "Mobi" not in ua and not ua.startswith("Dalvik/"):
        return TABLET

    if device_family in _MOBILE_DEVICE_FAMILIES or os_family in _MOBILE_OS_FAMILIES:
        return MOBILE
    # In the uap-core test cases, ua-parser names a device other than "Spider"
    # and the Mac models only for phones, tablets, TVs, consoles and cars, and
    # all but phones have returned above. This catches old feature phones,
    # which send no OS ("SAMSUNG-SGH-E530").
    if device_family not in ("", "Other") and not device_family.startswith("Mac"):
        return MOBILE
    if _MOBILE_TOKEN_PATTERN.search(ua):
        return MOBILE

    if os_family in _DESKTOP_OS_FAMILIES:
        return DESKTOP
    return OTHER


def _to_user_agent(result: Result) -> UserAgent:
    browser = result.user_agent or ua_parser.UserAgent()
    os = result.os or ua_parser.OS()
    return UserAgent(
        browser=browser.family,
        browser_version=_format_version(browser.major, browser.minor),
        os=os.family,
        os_version=_format_version(os.major, os.minor),
        device_type=_derive_device_type(result),
    )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_stripped(user_agent: str) -> UserAgent:
    return _to_user_agent(_resolver()(user_agent, Domain.ALL).complete())


def parse_user_agent(ua: str | None) -> UserAgent:
    """Parse a User-Agent header, with results cached per distinct string.

    None, an empty or whitespace-only string and "-" (the access-log
    placeholder) give UNKNOWN names, empty versions and device type "bot".
    Only the first MAX_PARSED_CHARS characters after stripping are parsed.
    """
    if ua is None:
        return _EMPTY
    stripped = ua.strip()
    if not stripped or stripped == "-":
        return _EMPTY
    return _parse_stripped(stripped[:MAX_PARSED_CHARS])
