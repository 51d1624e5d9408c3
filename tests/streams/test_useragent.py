"""Tests of streams.useragent against the expected parses of uap-core."""

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
import ua_parser
import yaml

from streams import useragent
from streams.useragent import UNKNOWN, UserAgent, parse_user_agent

UAP_CORE = Path(__file__).resolve().parents[1] / "data" / "user-agents" / "uap-core"

# libyaml's loader reads the larger uap-core files about six times faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@functools.cache
def _load_cases(relative_path: str) -> list[dict]:
    document = yaml.load((UAP_CORE / relative_path).read_text(encoding="utf-8"), Loader=YAML_LOADER)
    return document["test_cases"]


def _has_major(version: str, major: str | None) -> bool:
    """Return True when version ("major.minor" or "major") starts with the expected major.

    uap-core writes some majors with a dot ("3.1" for Windows 3.1), so the
    comparison is on the prefix and not on the first dot-separated field.
    """
    if not major:
        return version == ""
    return version == major or version.startswith(major + ".")


def _agreement(relative_path: str, field: str) -> tuple[float, float, list[tuple]]:
    """Return the family and family-plus-major agreement rates and the mismatches.

    The empty user agent is left out, because parse_user_agent names it
    UNKNOWN where uap-core expects "Other".
    """
    cases = [case for case in _load_cases(relative_path) if case["user_agent_string"]]
    family_matches = 0
    major_matches = 0
    mismatches = []
    for case in cases:
        parsed = parse_user_agent(case["user_agent_string"])
        family = getattr(parsed, field)
        version = getattr(parsed, f"{field}_version")
        family_matches += family == case["family"]
        if family == case["family"] and _has_major(version, case.get("major")):
            major_matches += 1
        else:
            mismatches.append((case["user_agent_string"], case["family"], case.get("major"), family, version))
    return family_matches / len(cases), major_matches / len(cases), mismatches


@pytest.mark.parametrize(
    "relative_path",
    [
        "tests/test_ua.yaml",
        "test_resources/firefox_user_agent_strings.yaml",
        "test_resources/opera_mini_user_agent_strings.yaml",
        "test_resources/pgts_browser_list.yaml",
        "test_resources/podcasting_user_agent_strings.yaml",
    ],
)
def test_browser_agrees_with_uap_core(relative_path):
    family_rate, major_rate, mismatches = _agreement(relative_path, "browser")
    print(f"{relative_path}: browser family {family_rate:.2%}, family and major {major_rate:.2%}")

    assert family_rate >= 0.99, mismatches[:5]
    assert major_rate >= 0.99, mismatches[:5]


@pytest.mark.parametrize(
    "relative_path",
    ["tests/test_os.yaml", "test_resources/additional_os_tests.yaml"],
)
def test_os_agrees_with_uap_core(relative_path):
    family_rate, major_rate, mismatches = _agreement(relative_path, "os")
    print(f"{relative_path}: OS family {family_rate:.2%}, family and major {major_rate:.2%}")

    assert family_rate >= 0.99, mismatches[:5]
    assert major_rate >= 0.99, mismatches[:5]


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (IPHONE_SAFARI, "mobile"),
        (IPAD_SAFARI, "tablet"),
        (WINDOWS_CHROME, "desktop"),
        (GOOGLEBOT, "bot"),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "desktop",
        ),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop"),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
            "mobile",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "tablet",
        ),
        ("Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0", "tablet"),
        ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", "mobile"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19041",
            "other",
        ),
        ("SAMSUNG-SGH-E530", "mobile"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; SM-G991B Build/RP1A.200720.012)", "mobile"),
        ("python-requests/2.31.0", "other"),
    ],
)
def test_device_type_known_strings(user_agent, expected):
    assert parse_user_agent(user_agent).device_type == expected


@pytest.mark.parametrize(
    ("device_family", "expected"),
    [("iPhone", "mobile"), ("iPod", "mobile"), ("iPad", "tablet"), ("Spider", "bot")],
)
def test_device_type_on_uap_device_cases(device_family, expected):
    cases = [case for case in _load_cases("tests/test_device.yaml") if case["family"] == device_family]
    wrong = [
        case["user_agent_string"]
        for case in cases
        if parse_user_agent(case["user_agent_string"]).device_type != expected
    ]

    assert cases
    assert wrong == []


def test_windows_chrome_fields():
    parsed = parse_user_agent(WINDOWS_CHROME)

    assert parsed == UserAgent(
        browser="Chrome",
        browser_version="124.0",
        os="Windows",
        os_version="10",
        device_type="desktop",
    )


def test_iphone_safari_fields():
    parsed = parse_user_agent(IPHONE_SAFARI)

    assert parsed == UserAgent(
        browser="Mobile Safari",
        browser_version="17.4",
        os="iOS",
        os_version="17.4",
        device_type="mobile",
    )


@pytest.mark.parametrize("user_agent", [None, "", "  ", "-"])
def test_missing_user_agent_unknown(user_agent):
    parsed = parse_user_agent(user_agent)

    assert parsed.browser == UNKNOWN
    assert parsed.browser_version == ""
    assert parsed.os == UNKNOWN
    assert parsed.os_version == ""
    assert parsed.device_type == "bot"


def test_unmatched_string_is_other():
    parsed = parse_user_agent("zz-no-rule-matches-this")

    assert parsed.browser == "Other"
    assert parsed.browser_version == ""
    assert parsed.os == "Other"
    assert parsed.os_version == ""
    assert parsed.device_type == "other"


def test_repeated_parse_cached():
    assert parse_user_agent(WINDOWS_CHROME) is parse_user_agent(WINDOWS_CHROME)


def test_user_agent_is_frozen():
    parsed = parse_user_agent(WINDOWS_CHROME)

    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.browser = "Firefox"


def test_pure_python_fallback(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError, as on a
    # machine without ua-parser-rs and google-re2.
    monkeypatch.setitem(sys.modules, "ua_parser.regex", None)
    monkeypatch.setitem(sys.modules, "ua_parser.re2", None)

    resolver = useragent._build_resolver()
    result = resolver(WINDOWS_CHROME, ua_parser.Domain.ALL).complete()

    assert isinstance(resolver, ua_parser.BasicResolver)
    assert result.user_agent.family == "Chrome"
    assert result.os.family == "Windows"


def test_long_user_agent_prefix_parsed(monkeypatch):
    seen: list[str] = []
    original = useragent._parse_stripped

    def recording_parse(user_agent: str) -> useragent.UserAgent:
        seen.append(user_agent)
        return original(user_agent)

    monkeypatch.setattr(useragent, "_parse_stripped", recording_parse)
    user_agent = WINDOWS_CHROME + " " + "ab " * 10_000

    parsed = parse_user_agent(user_agent)

    assert seen == [user_agent[:useragent.MAX_PARSED_CHARS]]
    assert len(seen[0]) == 512
    assert parsed.browser == "Chrome"
    assert parsed.os == "Windows"
    assert parsed.device_type == "desktop"
