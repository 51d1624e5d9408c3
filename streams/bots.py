"""Bot detection from the User-Agent header.

A user agent is a bot when any of these match it:

- the crawler list of the `crawlerdetect` package (0.4.2),
- the crawler list of the `crawler-user-agents` package (1.67.0),
- AUTOMATION_PATTERNS below, for headless browsers and HTTP clients that
  neither list covers,
- the operator's extra patterns.

A missing, empty, whitespace-only or "-" user agent is also a bot, because
every mainstream browser sends the header.

Only the first MAX_MATCHED_CHARS characters are matched, because matching
takes time that grows with the length of the string.

The two crawler lists run on RE2 (the `google-re2` package), whose automaton
matches all of a list's patterns in one pass over the string, while Python's
`re` tries each of crawlerdetect's 1,462 patterns at every position. A new
user agent of the sample access log takes 0.07 ms against 0.37 ms with `re`
(bench/bots/RESULTS.md). RE2 folds case by Unicode's
simple rules, so the Turkish "İ" and "ı" (U+0130, U+0131) no longer match an "i"
of a pattern, as they do in `re`: "NodePıng" was a bot before and is not now. The
verdicts are the same on the 66,815 distinct strings of the test data and the
access log, each also with its letter case swapped.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import crawleruseragents
import re2
from crawlerdetect.providers.crawlers import data as crawlerdetect_crawlers
from crawlerdetect.providers.exclusions import data as crawlerdetect_exclusions

logger = logging.getLogger(__name__)

# Distinct user agents kept per detector. An entry costs about 100 bytes plus
# the string (measured with tracemalloc on CPython 3.11), so with 150-character
# user agents a full cache takes an estimated 12 MB.
CACHE_SIZE = 50_000

# Characters of a user agent that are matched; the rest is ignored, so a bot
# name that appears only after them goes undetected. Matching 512 random
# letters takes about 0.9 ms, against 7.6 ms with Python's `re` for both lists
# (bench/bots/RESULTS.md).
# The longest user agent in the uap-core and crawler-user-agents test data has
# 492 characters, so every one of them is matched in full.
MAX_MATCHED_CHARS = 512

# Default user agents of automation tools that crawlerdetect 0.4.2 and
# crawler-user-agents 1.67.0 both miss. Matched case-insensitively on the raw
# user agent.
AUTOMATION_PATTERNS: tuple[str, ...] = (
    r"\bDeno/",  # fetch() in the Deno runtime
    r"\bBun/",  # fetch() in the Bun runtime
    r"^node$",  # fetch() in recent Node.js releases, which sends only "node"
    r"\bCypress/",  # the Electron browser of the Cypress test runner
    r"\bjsdom/",  # the jsdom DOM emulator
    r"\bSlimerJS/",  # headless Firefox driver
    r"\bLightpanda/",  # headless browser
    r"\bsplash Version/",  # Scrapinghub Splash headless renderer
    r"\binsomnia/",  # Insomnia API client
)


@functools.cache
def _browser_token_regex() -> re.Pattern[str]:
    """Compile the tokens that crawlerdetect strips before it matches.

    These are tokens that browsers carry ("Mozilla/5.0", "Safari/537.36",
    "Opera Mini/4.4.39008/...", "Build/..."). Removing them keeps a short
    crawler pattern such as "008/" from matching inside a browser's version
    number.
    """
    return re.compile("|".join(crawlerdetect_exclusions), re.IGNORECASE)


# A prefix of one crawlerdetect 0.4.2 pattern, "[a-z0-9\-_]*(bot|crawl|...)".
# With it, re.search backtracks over each run of letters and digits in time
# that grows with the square of the run's length: 50 ms for 512 letters, 17 s
# for 8,000 (measured on CPython 3.11). It can match the empty string, so a
# pattern without it finds a match in exactly the same strings.
_BACKTRACKING_PREFIX = r"[a-z0-9\-_]*"


RE2_MAX_MEMORY = 32 << 20
"""Bytes RE2 may use per compiled list. Its default of 8 MiB leaves the crawler-user-agents
automaton short of memory, and RE2 then falls back to a slower matcher and logs each time.
Compiling both lists and matching 5,000 user agents grew a process by 14 MiB."""


def _re2_options(case_sensitive: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.max_mem = RE2_MAX_MEMORY
    options.log_errors = False
    # The detector needs only whether a pattern matches, so RE2 need not track groups.
    options.never_capture = True
    return options


def _needs_python_re(pattern: str) -> bool:
    """Return whether `pattern` uses a lookaround, which RE2 does not support."""
    return "(?=" in pattern or "(?!" in pattern or "(?<" in pattern


@functools.cache
def _crawlerdetect_regexes() -> tuple[re2._Regexp, re.Pattern[str] | None]:
    """Compile the crawlerdetect list as CrawlerDetect does, without _BACKTRACKING_PREFIX.

    Return the RE2 regex of the patterns RE2 supports and a Python regex of the rest
    (crawlerdetect 0.4.2 has one, "Yandex(?!Search)"), or None when there is no rest.
    """
    patterns = [pattern.removeprefix(_BACKTRACKING_PREFIX) for pattern in crawlerdetect_crawlers]
    lookarounds = [pattern for pattern in patterns if _needs_python_re(pattern)]
    supported = [pattern for pattern in patterns if not _needs_python_re(pattern)]
    rest = re.compile("|".join(lookarounds), re.IGNORECASE) if lookarounds else None
    return re2.compile("|".join(supported), _re2_options(case_sensitive=False)), rest


@functools.cache
def _crawler_user_agents_regex() -> re2._Regexp:
    """Compile the crawler-user-agents list into one case-sensitive regex.

    The package's own is_crawler() matches case-sensitively by default.
    """
    patterns = (entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA)
    return re2.compile("|".join(patterns), _re2_options(case_sensitive=True))


def _crawlerdetect_match(text: str) -> bool:
    supported, rest = _crawlerdetect_regexes()
    return supported.search(text) is not None or (rest is not None and rest.search(text) is not None)


def _compile_extra_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Compile the automation and operator patterns into one case-insensitive regex.

    Raises ValueError naming the first invalid pattern.
    """
    checked: list[str] = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"invalid bot pattern {pattern!r}: {error}. Fix it or remove it from extra_patterns."
            ) from error
        checked.append(f"(?:{pattern})")
    if not checked:
        return None
    return re.compile("|".join(checked), re.IGNORECASE)


class BotDetector:
    """Classifier of user agents into bots and browsers, with a per-instance LRU cache."""

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        """Build a detector that also flags any user agent matching extra_patterns.

        extra_patterns are regular expressions matched case-insensitively with
        re.search. Raises ValueError if one of them does not compile.
        """
        extra = tuple(extra_patterns)
        self._extra_regex = _compile_extra_patterns(AUTOMATION_PATTERNS + extra)
        # A cache per instance, so that a detector built with new operator
        # patterns never returns verdicts cached under the old ones.
        self._match_cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._match)
        if extra:
            logger.info("bot detector built with %d operator patterns", len(extra))

    def is_bot(self, user_agent: str | None) -> bool:
        """Return True when the user agent is missing, empty, "-" or a known bot.

        Only the first MAX_MATCHED_CHARS characters after stripping are matched.
        """
        if user_agent is None:
            return True
        stripped = user_agent.strip()
        if not stripped or stripped == "-":
            return True
        return self._match_cached(stripped[:MAX_MATCHED_CHARS])

    def _match(self, user_agent: str) -> bool:
        if self._extra_regex is not None and self._extra_regex.search(user_agent):
            return True
        # CrawlerDetect.is_crawler also removes the browser tokens before it matches.
        without_browser_tokens = _browser_token_regex().sub("", user_agent)
        if without_browser_tokens and _crawlerdetect_match(without_browser_tokens):
            return True
        return _crawler_user_agents_regex().search(without_browser_tokens) is not None


@functools.cache
def _default_detector() -> BotDetector:
    return BotDetector()


def detect_bot(user_agent: str | None) -> bool:
    """Return BotDetector().is_bot(user_agent), using one detector shared by the process."""
    return _default_detector().is_bot(user_agent)


def read_bot_patterns(path: str | None) -> list[str]:
    """Return the extra bot patterns of a file: one regular expression per line, # starts a comment."""
    if not path:
        return []
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
