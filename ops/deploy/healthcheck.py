"""Container health check: find the Weir service running in this container and request its /health.

The image runs one `weir` command per container, so the check reads the command lines under
/proc and takes the first `weir SERVICE ...` it finds. It works out the service's port the way
the service does: the command-line option, then the environment variable, then the default.

Exit status 0 means the service returned 200, which it does while healthy or degraded. It also
means the container runs a one-off command without an HTTP port (schema, site, import-logs).
Exit status 1 means the service returned another status (503 while unhealthy), or the request
failed or timed out. Only the standard library is used, so the check works in any image that
has Python.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

TIMEOUT_S = 4.0
"""Seconds for all of a check's requests together, under the image's HEALTHCHECK --timeout of 5 s."""

# Each service: the option that sets its health port, the environment variable, and the default.
SERVICE_PORTS = {
    "collector": ("--port", "PORT", 4001),
    "api": ("--port", "PORT", 4002),
    "realtime": ("--port", "PORT", 4003),
    "processor": ("--metrics-port", "METRICS_PORT", 4010),
}
# `weir up` runs the collector, the API, the live feed and the processor in one process, and its
# options set each port.
UP_PORTS = (("--collector-port", 4001), ("--api-port", 4002), ("--realtime-port", 4003),
            ("--processor-metrics-port", 4010))
# The loopback address to request for a service that listens on every address. asyncio and uvloop set
# IPV6_V6ONLY on IPv6 sockets in create_server, so a service on `::` refuses connections to 127.0.0.1.
ANY_ADDRESS_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


def processes(proc: Path = Path("/proc")) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Yield the argument list and environment of each process under `proc`, PID 1 first.

    A process whose environment cannot be read gets this check's own environment, which in a
    container is the same one the container was started with.
    """
    pids = sorted((int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()), key=lambda pid: pid != 1)
    for pid in pids:
        try:
            raw_argv = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue  # the process ended while the list was read
        if not raw_argv:
            continue  # a kernel thread
        try:
            environment = _split_environment((proc / str(pid) / "environ").read_bytes())
        except OSError:
            environment = dict(os.environ)
        yield [part.decode(errors="replace") for part in raw_argv.rstrip(b"\0").split(b"\0")], environment


def _split_environment(raw: bytes) -> dict[str, str]:
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if b"=" in item)
    return {name: value for name, _, value in pairs}


def weir_arguments(argv: list[str]) -> list[str] | None:
    """Return the arguments after `weir` (or `python -m ops.cli`), or None for another program."""
    for index, part in enumerate(argv):
        if os.path.basename(part) == "weir":
            return argv[index + 1:]
        if part == "-m" and index + 1 < len(argv) and argv[index + 1] == "ops.cli":
            return argv[index + 2:]
    return None


def option_value(args: list[str], name: str) -> str | None:
    """Return the value of `--name VALUE` or `--name=VALUE`; the last one wins, as in argparse."""
    value = None
    for index, part in enumerate(args):
        if part == name and index + 1 < len(args):
            value = args[index + 1]
        elif part.startswith(name + "="):
            value = part.split("=", 1)[1]
    return value


def health_urls(args: list[str], env: Mapping[str, str]) -> list[str]:
    """Return the /health URLs of the service that `weir ARGS` runs; empty for a one-off command."""
    if not args:
        return []
    command = args[0]
    host = option_value(args, "--host") or env.get("HOST", "")
    host = ANY_ADDRESS_LOOPBACK.get(host) or url_host(host)

    if command == "up":
        ports = [int(option_value(args, option) or default) for option, default in UP_PORTS]
        return [f"http://{host}:{port}/health" for port in ports if port]
    if command not in SERVICE_PORTS:
        return []

    option, variable, default = SERVICE_PORTS[command]
    port = int(option_value(args, option) or env.get(variable) or default)
    # A processor started with METRICS_PORT=0 has no health port to request.
    return [f"http://{host}:{port}/health"] if port else []


def url_host(host: str) -> str:
    """Return `host` as a URL writes it: an IPv6 address in brackets, its zone id escaped (RFC 6874)."""
    if ":" not in host or host.startswith("["):
        return host
    return "[" + host.replace("%", "%25") + "]"


def check(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """Request `url`; return whether the response status was 200, and a one-line description."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url} answered {error.code}: {error.read(300).decode(errors='replace')}"
    except (OSError, urllib.error.URLError) as error:
        return False, f"{url} failed: {error}"
    except (ValueError, http.client.InvalidURL) as error:  # Raised for a HOST or --host that no URL can contain.
        return False, f"{url} is not a valid URL: {error}; check the service's HOST or --host"


def main() -> int:
    for argv, environment in processes():
        args = weir_arguments(argv)
        if args is None:
            continue
        try:
            urls = health_urls(args, environment)
        except ValueError as error:
            print(f"cannot tell the health port of `weir {' '.join(args)}`: {error}; set its port to a number",
                  file=sys.stderr)
            return 1
        # `weir up` serves several ports; together their requests stay within TIMEOUT_S.
        results = [check(url, TIMEOUT_S / len(urls)) for url in urls]
        for ok, message in results:
            print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if all(ok for ok, _ in results) else 1
    print("no weir process found in this container", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
