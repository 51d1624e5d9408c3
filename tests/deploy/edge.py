"""A running edge for the nginx tests: Debian's nginx with the shipped configuration in front of
three collector processes, an API process, a realtime process and one processor, all on 127.0.0.1.

The configuration is rendered from ops/deploy/nginx/nginx.conf by replacing only addresses and
file paths, and every replacement must match, so the test runs the shipped routing, buffering,
cache and TLS settings. The rendering adds one location, /held-stream, which is a copy of the
shipped live-feed location pointed at a stand-in upstream that the tests control.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import redis as redis_sync

from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP
from tests.conftest import (PG_ADMIN_URL, REDIS_SERVER_URL, REDIS_TEST_DB, REPO, database_url_for,
                            free_port, service_env, weir_command)
from tests.deploy.deploy_files import NGINX_CONF

SITE = "edge.example"
START_TIMEOUT_S = 60.0
HELD_STREAM_PATH = "/held-stream"
LIVE_LOCATION = re.compile(r"^( +)location ~ \^/\(live\|realtime\)\(/\|\$\) \{\n.*?^\1\}\n", re.MULTILINE | re.DOTALL)


@dataclass
class Edge:
    """Addresses of the running edge and the processes behind it."""

    https_url: str
    http_url: str
    ca_file: Path
    collector_urls: list[str]
    api_url: str
    realtime_url: str
    held_stream_port: int
    database_url: str
    redis_url: str
    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)


def render_nginx_conf(text: str, *, workdir: Path, http_port: int, https_port: int, collector_ports: list[int],
                      api_port: int, realtime_port: int, held_stream_port: int, cert: Path, key: Path) -> str:
    """Return the shipped configuration with test addresses and paths; raise ValueError on a missing directive."""
    collectors = "".join(f"server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;\n        "
                         for port in collector_ports).rstrip()
    replacements = [
        # The image's `nginx` user does not exist here. Without the directive, nginx started by root
        # runs its workers as the user `nobody`, and nginx started by another user runs them as that user.
        ("user nginx;\n", ""),
        ("pid /var/run/nginx.pid;", f"pid {workdir}/nginx.pid;"),
        ("/var/log/nginx/", f"{workdir}/logs/"),
        ("/var/cache/nginx/", f"{workdir}/cache/"),
        ("ssl_certificate /etc/nginx/tls/tls.crt;", f"ssl_certificate {cert};"),
        ("ssl_certificate_key /etc/nginx/tls/tls.key;", f"ssl_certificate_key {key};"),
        ("server collector:4001 max_fails=3 fail_timeout=10s;", collectors),
        ("server api:4002", f"server 127.0.0.1:{api_port}"),
        ("server realtime:4003", f"server 127.0.0.1:{realtime_port}"),
        ("listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;"),
        ("listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{https_port} ssl http2 default_server;"),
    ]
    for old, new in replacements:
        if old not in text:
            raise ValueError(f"nginx.conf no longer contains {old.strip()!r}; update the test's rendering")
        text = text.replace(old, new)
    return add_held_stream_location(text, held_stream_port)


def add_held_stream_location(text: str, port: int) -> str:
    """Copy the live-feed location to HELD_STREAM_PATH, proxied to a stand-in upstream on `port`."""
    match = LIVE_LOCATION.search(text)
    if match is None or "proxy_pass http://weir_realtime;" not in match.group(0):
        raise ValueError("nginx.conf has no live-feed location `location ~ ^/(live|realtime)(/|$)` that proxies "
                         "to weir_realtime; update the test's rendering")
    copy = (match.group(0)
            .replace("location ~ ^/(live|realtime)(/|$) {", f"location ~ ^{HELD_STREAM_PATH}(/|$) {{")
            .replace("proxy_pass http://weir_realtime;", "proxy_pass http://weir_held_stream;"))
    upstream = f"    upstream weir_held_stream {{\n        server 127.0.0.1:{port};\n    }}\n\n"
    text = text[:match.start()] + copy + "\n" + text[match.start():]
    return text.replace("    upstream weir_realtime {", upstream + "    upstream weir_realtime {", 1)


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """Create a throwaway self-signed certificate for 127.0.0.1 and localhost."""
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def wait_for_http(url: str, timeout_s: float = START_TIMEOUT_S, process: subprocess.Popen | None = None,
                  context=None) -> None:
    """Wait until `url` returns 200; raise AssertionError with the last error when it does not."""
    deadline = time.monotonic() + timeout_s
    last_error: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process for {url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as error:
            last_error = error
        time.sleep(0.1)
    raise AssertionError(f"{url} did not return 200 within {timeout_s}s: {last_error!r}")


def wait_for_group(redis_url: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until the processor created its consumer group, its last start-up step after the schema guard."""
    client = redis_sync.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"processor exited with code {process.returncode}")
            if client.exists(EVENTS_STREAM):
                names = {g["name"].decode() for g in client.xinfo_groups(EVENTS_STREAM)}
                if PROCESSOR_GROUP in names:
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"processor did not create group {PROCESSOR_GROUP} within {timeout_s}s")


def _create_database() -> str:
    name = f"weir_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()

    asyncio.run(create())
    return database_url_for(name)


def _drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()

    asyncio.run(drop())


def _start(edge: Edge, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = (edge.workdir / "logs" / f"{name}.log").open("wb")
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    edge.processes[name] = process
    return process


def start_edge() -> Edge:
    """Start the processor, three collectors, the API, the realtime service and nginx.

    The caller must call stop_edge, which also drops the database and flushes Redis.
    """
    workdir = Path(tempfile.mkdtemp(prefix="weir-edge-"))
    # When the tests run as root, nginx workers run as the user `nobody` and must reach the temp and cache folders.
    workdir.chmod(0o755)
    (workdir / "logs").mkdir()
    (workdir / "cache").mkdir()
    redis_url = f"{REDIS_SERVER_URL}/{REDIS_TEST_DB}"
    redis_sync.Redis.from_url(redis_url).flushdb()
    cert, key = make_certificate(workdir)
    collector_ports = [free_port() for _ in range(3)]
    api_port, realtime_port, held_stream_port = free_port(), free_port(), free_port()
    http_port, https_port = free_port(), free_port()
    edge = Edge(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", cert,
                [f"http://127.0.0.1:{port}" for port in collector_ports], f"http://127.0.0.1:{api_port}",
                f"http://127.0.0.1:{realtime_port}", held_stream_port, _create_database(), redis_url, workdir)
    try:
        _start_services(edge, collector_ports, api_port, realtime_port)
        _start_nginx(edge, http_port, https_port, collector_ports, api_port, realtime_port, held_stream_port,
                     cert, key)
    except BaseException:
        stop_edge(edge)
        raise
    return edge


def _start_services(edge: Edge, collector_ports: list[int], api_port: int, realtime_port: int) -> None:
    env = service_env(edge.database_url, edge.redis_url, LOG_LEVEL="warning", TRUSTED_PROXIES="127.0.0.1")
    # The processor's side port would listen on every interface, so the test turns it off.
    processor = _start(edge, "processor", weir_command("processor", "--metrics-port", "0", "--concurrency", "2"), env)
    wait_for_group(edge.redis_url, processor)
    added = subprocess.run(weir_command("site", "add", SITE, "--timezone", "UTC"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr

    for index, port in enumerate(collector_ports):
        _start(edge, f"collector-{index}", weir_command("collector", "--host", "127.0.0.1", "--port", str(port)), env)
    _start(edge, "api", weir_command("api", "--host", "127.0.0.1", "--port", str(api_port)), env)
    _start(edge, "realtime", weir_command("realtime", "--host", "127.0.0.1", "--port", str(realtime_port)), env)
    for index, url in enumerate(edge.collector_urls):
        wait_for_http(f"{url}/health", process=edge.processes[f"collector-{index}"])
    wait_for_http(f"{edge.api_url}/health", process=edge.processes["api"])
    wait_for_http(f"{edge.realtime_url}/health", process=edge.processes["realtime"])


def _start_nginx(edge: Edge, http_port: int, https_port: int, collector_ports: list[int], api_port: int,
                 realtime_port: int, held_stream_port: int, cert: Path, key: Path) -> None:
    conf = edge.workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), workdir=edge.workdir, http_port=http_port,
                                      https_port=https_port, collector_ports=collector_ports, api_port=api_port,
                                      realtime_port=realtime_port, held_stream_port=held_stream_port,
                                      cert=cert, key=key))
    command = ["nginx", "-p", str(edge.workdir), "-c", str(conf), "-e", str(edge.workdir / "logs" / "error.log")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    nginx = _start(edge, "nginx", [*command, "-g", "daemon off;"], dict(os.environ))
    wait_for_http(f"{edge.http_url}/nginx-health", process=nginx, timeout_s=15)


def stop_edge(edge: Edge) -> None:
    """Stop every process the edge started (nginx first), then drop its database and flush Redis."""
    order = ["nginx", *[name for name in edge.processes if name != "nginx"]]
    for name in order:
        process = edge.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for name in order:
        process = edge.processes.get(name)
        if process is None:
            continue
        try:
            process.wait(timeout=35)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    _drop_database(edge.database_url)
    redis_sync.Redis.from_url(edge.redis_url).flushdb()
    shutil.rmtree(edge.workdir, ignore_errors=True)


def process_log(edge: Edge, name: str) -> str:
    path = edge.workdir / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
