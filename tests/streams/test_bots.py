"""Tests of streams.bots on the crawler-user-agents list and uap-core browser strings."""

import functools
import json
from pathlib import Path

import pytest
import yaml

import crawleruseragents
from crawlerdetect import CrawlerDetect
from crawlerdetect.providers.crawlers import data as crawlerdetect_crawlers

from streams import bots
from streams.bots import MAX_MATCHED_CHARS, BotDetector, detect_bot

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "user-agents"
CRAWLER_LIST = DATA_DIR / "crawler-user-agents" / "crawler-user-agents.json"
UAP_CORE = DATA_DIR / "uap-core"

# libyaml's loader reads the larger uap-core files about six times faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Expected families (uap-core names) of browsers that people browse with.
# App webviews, feed readers and libraries are left out because some of them
# are bots in all but name.
MAINSTREAM_BROWSERS = frozenset(
    {
        "Amazon Silk",
        "Brave",
        "Chrome",
        "Chrome Mobile",
        "Chrome Mobile WebView",
        "Chrome Mobile iOS",
        "Chromium",
        "Edge",
        "Edge Mobile",
        "Edge iOS",
        "Firefox",
        "Firefox Alpha",
        "Firefox Beta",
        "Firefox Focus",
        "Firefox Mobile",
        "Firefox iOS",
        "IE",
        "IE Mobile",
        "Mobile Safari",
        "Mobile Safari UI/WKWebView",
        "Opera",
        "Opera Mini",
        "Opera Mobile",
        "Opera Touch",
        "Pale Moon",
        "Safari",
        "Samsung Internet",
        "UC Browser",
        "Vivaldi",
        "Whale",
        "Yandex Browser",
    }
)

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)

CURRENT_BROWSERS = (
    CHROME_WINDOWS,
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 "
    "(KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
)

AUTOMATION_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 "
    "(KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
    "python-requests/2.31.0",
    "curl/8.4.0",
    "Wget/1.21.4",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
    "Java/17.0.2",
    "libwww-perl/6.72",
    "Python/3.11 aiohttp/3.9.1",
    "Deno/1.38.0",
    "Bun/1.0.0",
    "node",
    "Mozilla/5.0 (linux) AppleWebKit/537.36 (KHTML, like Gecko) jsdom/22.1.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Cypress/13.6.0 Chrome/118.0.5993.159 Electron/27.1.3 Safari/537.36",
    "insomnia/2023.5.8",
)

CUSTOM_AGENT = CHROME_WINDOWS + " AcmeKiosk/3.1"


def _load_crawler_instances() -> list[str]:
    entries = json.loads(CRAWLER_LIST.read_text(encoding="utf-8"))
    return [instance for entry in entries for instance in entry.get("instances", [])]


@functools.cache
def _load_uap_cases(relative_path: str) -> list[dict]:
    document = yaml.load((UAP_CORE / relative_path).read_text(encoding="utf-8"), Loader=YAML_LOADER)
    return document["test_cases"]


def _load_mainstream_browsers(relative_path: str) -> list[str]:
    return [
        case["user_agent_string"]
        for case in _load_uap_cases(relative_path)
        if case["family"] in MAINSTREAM_BROWSERS
    ]


def _flagged(detector: BotDetector, user_agents: list[str]) -> list[str]:
    return [user_agent for user_agent in user_agents if detector.is_bot(user_agent)]


def test_crawler_instances_detected():
    instances = _load_crawler_instances()
    missed = [instance for instance in instances if not BotDetector().is_bot(instance)]
    rate = 1 - len(missed) / len(instances)
    print(f"crawler instances detected: {rate:.2%} of {len(instances)}")

    assert len(instances) == 2116
    assert rate >= 0.98, f"detected {rate:.2%}, missed e.g. {missed[:5]}"


@pytest.mark.parametrize(
    ("relative_path", "expected_count"),
    [
        ("tests/test_ua.yaml", 146),
        ("test_resources/firefox_user_agent_strings.yaml", 191),
        ("test_resources/opera_mini_user_agent_strings.yaml", 203),
    ],
)
def test_mainstream_browsers_rarely_flagged(relative_path, expected_count):
    browsers = _load_mainstream_browsers(relative_path)
    flagged = _flagged(BotDetector(), browsers)
    rate = len(flagged) / len(browsers)
    print(f"{relative_path}: {rate:.2%} of {len(browsers)} mainstream browsers flagged")

    assert len(browsers) == expected_count
    assert rate <= 0.01, f"flagged {rate:.2%}: {flagged[:5]}"


def test_pgts_browsers_false_positive_floor():
    # The pgts list is mostly from 2004 to 2008. Its flagged browsers carry
    # toolbars and feed readers ("StumbleUpon/1.998", "Feedreader") that
    # crawlerdetect 0.4.2 lists as crawlers, 257 of 8,465 when measured.
    browsers = _load_mainstream_browsers("test_resources/pgts_browser_list.yaml")
    flagged = _flagged(BotDetector(), browsers)
    rate = len(flagged) / len(browsers)
    print(f"pgts: {rate:.2%} of {len(browsers)} mainstream browsers flagged")

    assert len(browsers) == 8465
    assert rate <= 0.035, f"flagged {rate:.2%}: {flagged[:5]}"


@pytest.mark.parametrize("user_agent", [None, "", "   ", "-", " - "])
def test_missing_user_agent_is_bot(user_agent):
    assert BotDetector().is_bot(user_agent) is True


@pytest.mark.parametrize("user_agent", CURRENT_BROWSERS)
def test_current_browser_not_bot(user_agent):
    assert BotDetector().is_bot(user_agent) is False


@pytest.mark.parametrize("user_agent", AUTOMATION_AGENTS)
def test_automation_agent_is_bot(user_agent):
    assert BotDetector().is_bot(user_agent) is True


def test_surrounding_whitespace_ignored():
    detector = BotDetector()

    assert detector.is_bot("  python-requests/2.31.0\t") is True
    assert detector.is_bot(f" {CHROME_WINDOWS} ") is False


def test_extra_pattern_flags_custom_agent():
    assert BotDetector().is_bot(CUSTOM_AGENT) is False
    assert BotDetector(extra_patterns=[r"acmekiosk/\d"]).is_bot(CUSTOM_AGENT) is True


def test_extra_pattern_leaves_browsers_alone():
    detector = BotDetector(extra_patterns=[r"acmekiosk/\d"])

    assert detector.is_bot(CHROME_WINDOWS) is False


def test_extra_pattern_not_shared():
    BotDetector(extra_patterns=[r"AcmeKiosk"]).is_bot(CUSTOM_AGENT)

    assert detect_bot(CUSTOM_AGENT) is False


def test_invalid_extra_pattern_rejected():
    with pytest.raises(ValueError, match=r"invalid bot pattern '\(unclosed'"):
        BotDetector(extra_patterns=["(unclosed"])


def test_detect_bot_default_detector():
    assert detect_bot("python-requests/2.31.0") is True
    assert detect_bot(CHROME_WINDOWS) is False
    assert detect_bot(None) is True


def test_repeated_call_same_verdict():
    detector = BotDetector()

    first = [detector.is_bot(user_agent) for user_agent in AUTOMATION_AGENTS + CURRENT_BROWSERS]
    second = [detector.is_bot(user_agent) for user_agent in AUTOMATION_AGENTS + CURRENT_BROWSERS]

    assert first == second


def _record_matched(detector: BotDetector) -> list[str]:
    seen: list[str] = []
    original = detector._match_cached

    def recording_match(user_agent: str) -> bool:
        seen.append(user_agent)
        return original(user_agent)

    detector._match_cached = recording_match
    return seen


def test_long_user_agent_prefix_matched():
    user_agent = CHROME_WINDOWS + " " + "a" * 30_000
    detector = BotDetector()
    seen = _record_matched(detector)

    assert detector.is_bot(user_agent) is False
    assert seen == [user_agent[:MAX_MATCHED_CHARS]]
    assert len(seen[0]) == 512


def test_long_user_agent_early_bot():
    assert BotDetector().is_bot("Googlebot/2.1 " + "a" * 30_000) is True


def test_long_user_agent_late_bot_missed():
    user_agent = CHROME_WINDOWS + " " + "a" * 30_000 + " Googlebot/2.1"

    assert BotDetector().is_bot(user_agent) is False


def test_crawlerdetect_backtracking_prefix_removed():
    supported, rest = bots._crawlerdetect_regexes()
    pattern = supported.pattern + "|" + rest.pattern

    assert bots._BACKTRACKING_PREFIX in "|".join(crawlerdetect_crawlers)
    assert bots._BACKTRACKING_PREFIX not in pattern
    assert "(bot|crawl|headless|" in pattern


def test_crawlerdetect_verdicts_unchanged():
    # The crawlerdetect list without the backtracking prefix flags exactly the
    # strings that CrawlerDetect itself flags.
    user_agents = _load_crawler_instances() + [
        case["user_agent_string"] for case in _load_uap_cases("tests/test_ua.yaml")
    ]
    crawler_detect = CrawlerDetect()
    differ = []
    for user_agent in user_agents:
        without_browser_tokens = bots._browser_token_regex().sub("", user_agent.strip())
        ours = bool(without_browser_tokens) and bots._crawlerdetect_match(without_browser_tokens)
        if ours != crawler_detect.is_crawler(user_agent):
            differ.append(user_agent)

    assert len(user_agents) == 2116 + 1601
    assert differ == []


def test_crawler_user_agents_verdicts_unchanged():
    # RE2 flags exactly the strings that the package's own is_crawler() flags with Python's re,
    # after the same browser tokens are removed.
    user_agents = _load_crawler_instances() + [
        case["user_agent_string"] for case in _load_uap_cases("tests/test_ua.yaml")
    ]
    differ = []
    for user_agent in user_agents:
        without_browser_tokens = bots._browser_token_regex().sub("", user_agent.strip())
        ours = bots._crawler_user_agents_regex().search(without_browser_tokens) is not None
        if ours != crawleruseragents.is_crawler(without_browser_tokens):
            differ.append(user_agent)

    assert len(user_agents) == 2116 + 1601
    assert differ == []
