"""docs/operations.md: every `weir` command the guide gives operators exists and accepts its arguments."""

from __future__ import annotations

import re
import shlex

import pytest

from ops.cli import build_parser
from tests.conftest import REPO

GUIDE = REPO / "docs" / "operations.md"
# `docker compose run [options] processor ARGS` runs `weir ARGS` in the processor's container.
COMPOSE_RUN = re.compile(r"docker compose run (?:--?[\w-]+ )*processor (?P<args>[^#\n]+)")
INLINE = re.compile(r"`weir (?P<command>[a-z-]+)(?: (?P<action>[a-z-]+))?")


def subcommands(parser) -> dict:
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk of subparsers
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def compose_run_commands() -> list[list[str]]:
    return [shlex.split(match.group("args")) for match in COMPOSE_RUN.finditer(GUIDE.read_text())]


def test_guide_has_compose_run_commands():
    assert len(compose_run_commands()) >= 4


@pytest.mark.parametrize("args", compose_run_commands(), ids=" ".join)
def test_compose_run_command_parses(args):
    parsed = build_parser().parse_args(args)

    assert parsed.command == args[0]


def test_inline_commands_exist():
    commands = subcommands(build_parser())
    unknown = []
    for line in GUIDE.read_text().splitlines():
        if line.strip().startswith("TODO:"):
            continue  # a TODO names a command that does not exist yet
        for match in INLINE.finditer(line):
            command, action = match.group("command"), match.group("action")
            if command not in commands:
                unknown.append(f"weir {command}")
                continue
            actions = subcommands(commands[command])
            if actions and action not in actions:
                unknown.append(f"weir {command} {action}")

    assert unknown == []
