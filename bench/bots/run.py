"""Time bot detection per new user agent: the crawler lists on RE2, as streams/bots.py runs them, against Python's re.

Two sets of user agents, each matched once by a new detector so that no verdict comes from its
cache: the distinct user agents of the sample access log, and strings of random letters of
MAX_MATCHED_CHARS characters, the longest a detector reads. The `re` column compiles the same
lists with Python's re into the same structure (crawlerdetect case-insensitive without its
backtracking prefix, crawler-user-agents case-sensitive), so the difference is the engine alone.
Results: bench/bots/RESULTS.md.

    .venv/bin/python -m bench.bots.run [--random 200]
"""

from __future__ import annotations

import argparse
import random
import re
import string
import time
from pathlib import Path

import crawleruseragents
from crawlerdetect.providers.crawlers import data as crawlerdetect_crawlers

from ops.logformat import MalformedLine, parse_line, read_log_lines
from streams import bots

ACCESS_LOG = Path(__file__).resolve().parents[2] / "tests" / "data" / "access-logs" / "apache_combined.log"


class PythonReDetector(bots.BotDetector):
    """BotDetector with both crawler lists on Python's re, for comparison only."""

    def __init__(self) -> None:
        super().__init__()
        patterns = [p.removeprefix(bots._BACKTRACKING_PREFIX) for p in crawlerdetect_crawlers]
        self._crawlerdetect = re.compile("|".join(patterns), re.IGNORECASE)
        self._crawler_user_agents = re.compile(
            "|".join(entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA))

    def _match(self, user_agent: str) -> bool:
        if self._extra_regex is not None and self._extra_regex.search(user_agent):
            return True
        without_browser_tokens = bots._browser_token_regex().sub("", user_agent)
        if without_browser_tokens and self._crawlerdetect.search(without_browser_tokens):
            return True
        return self._crawler_user_agents.search(without_browser_tokens) is not None


def access_log_user_agents() -> list[str]:
    found = set()
    for number, text in read_log_lines(ACCESS_LOG):
        try:
            user_agent = parse_line(text, number, "combined").user_agent
        except MalformedLine:
            continue
        if user_agent:
            found.add(user_agent)
    return sorted(found)


def random_user_agents(count: int) -> list[str]:
    rng = random.Random(1)
    return ["".join(rng.choice(string.ascii_letters) for _ in range(bots.MAX_MATCHED_CHARS)) for _ in range(count)]


def ms_per_user_agent(detector: bots.BotDetector, user_agents: list[str]) -> tuple[float, int]:
    """Return milliseconds of CPU per user agent and the number flagged.

    The first call, which compiles the lists, is not timed.
    """
    detector.is_bot("warm-up")
    started = time.process_time()
    flagged = sum(detector.is_bot(user_agent) for user_agent in user_agents)
    return (time.process_time() - started) / len(user_agents) * 1000, flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=200, help="random user agents to time (default 200)")
    args = parser.parse_args()

    sets = {"sample access log, distinct": access_log_user_agents(),
            f"random letters, {bots.MAX_MATCHED_CHARS} characters": random_user_agents(args.random)}
    print("| user agents | count | RE2, ms each | Python re, ms each | flagged (RE2 / re) |")
    print("|---|---|---|---|---|")
    for name, user_agents in sets.items():
        re2_ms, re2_flagged = ms_per_user_agent(bots.BotDetector(), user_agents)
        re_ms, re_flagged = ms_per_user_agent(PythonReDetector(), user_agents)
        print(f"| {name} | {len(user_agents):,} | {re2_ms:.3f} | {re_ms:.3f} | {re2_flagged} / {re_flagged} |")


if __name__ == "__main__":
    main()
