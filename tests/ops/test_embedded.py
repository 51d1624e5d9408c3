"""Tests of ops.embedded against real valkey-server and PostgreSQL processes.

Each test uses its own data folder and free ports, never 6379/5432 (the machine's servers)
or 6390/5440 (the defaults of a developer's `make run`). The `data_dir` fixture stops every
server that runs from its folder, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import time
from pathlib import Path

import asyncpg
import pytest
import redis

from ops import embedded
from ops.embedded import EmbeddedServerError, EmbeddedServers, ensure_servers, stop_servers

RESERVED_PORTS = {5432, 5440, 6379, 6390}


def _free_port(excluded: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS and port not in excluded:
            return port


@pytest.fixture
def ports() -> dict[str, int]:
    redis_port = _free_port(set())
    return {"redis_port": redis_port, "pg_port": _free_port({redis_port})}


@pytest.fixture
def data_dir(tmp_path: Path):
    directory = tmp_path / "weir-data"
    try:
        yield directory
    finally:
        embedded.stop_embedded(directory)


def _start(data_dir: Path, ports: dict[str, int]) -> EmbeddedServers:
    return ensure_servers(None, None, data_dir, **ports)


def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            return await connection.fetch(query)
        finally:
            await connection.close()

    return asyncio.run(run())


def _execute(url: str, *statements: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    host = rest.split("@", 1)[1]
    return f"{scheme}://weir:{password}@{host}"


def _wait_for_exit(pid: int, timeout: float = 5.0) -> None:
    """Wait until `pid` is gone or a zombie. A killed daemon stays a zombie until init reaps it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        except FileNotFoundError:
            return
        if status.rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still runs {timeout} s after SIGKILL")


def test_start_serves_requested_ports(data_dir, ports):
    servers = _start(data_dir, ports)

    assert servers.redis_url == f"redis://127.0.0.1:{ports['redis_port']}/0"
    assert servers.database_url.startswith("postgresql://weir:")
    assert servers.database_url.endswith(f"@127.0.0.1:{ports['pg_port']}/weir")
    assert isinstance(servers.redis_pid, int)
    assert isinstance(servers.postgres_pid, int)
    assert redis.Redis.from_url(servers.redis_url).ping() is True
    row = _fetch(servers.database_url, "SELECT 1 AS one, current_user, current_database()")[0]
    assert row["one"] == 1
    assert row["current_user"] == "weir"
    assert row["current_database"] == "weir"
    owner = _fetch(
        servers.database_url,
        "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = 'weir'",
    )[0]["owner"]
    assert owner == "weir"


def test_redis_config_and_streams(data_dir, ports):
    servers = _start(data_dir, ports)
    client = redis.Redis.from_url(servers.redis_url, decode_responses=True)

    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
    assert Path(client.config_get("dir")["dir"]) == (data_dir / "redis").resolve()

    entry_id = client.xadd("events", {"type": "pageview", "path": "/"})
    client.xgroup_create("events", "sinks", id="0")
    delivered = client.xreadgroup("sinks", "consumer-a", {"events": ">"}, count=10)
    assert delivered == [["events", [(entry_id, {"type": "pageview", "path": "/"})]]]

    # consumer-a never acknowledges, so consumer-b claims the entry once it is idle.
    next_id, claimed, deleted = client.xautoclaim("events", "sinks", "consumer-b", min_idle_time=0, start_id="0-0")
    assert next_id == "0-0"
    assert claimed == [(entry_id, {"type": "pageview", "path": "/"})]
    assert deleted == []
    assert client.xpending("events", "sinks")["consumers"] == [{"name": "consumer-b", "pending": 1}]


def test_postgres_requires_password(data_dir, ports):
    servers = _start(data_dir, ports)

    assert _fetch(servers.database_url, "SHOW listen_addresses")[0][0] == "127.0.0.1"
    assert _fetch(servers.database_url, "SHOW password_encryption")[0][0] == "scram-sha-256"
    with pytest.raises(asyncpg.InvalidPasswordError):
        _fetch(_with_password(servers.database_url, "wrong-password"), "SELECT 1")

    hba_rules = [
        line.split()
        for line in (data_dir / "postgres" / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert hba_rules == [["host", "all", "all", "127.0.0.1/32", "scram-sha-256"]]

    password_path = data_dir / "postgres-password"
    assert stat.S_IMODE(password_path.stat().st_mode) == 0o600
    assert password_path.read_text().strip() in servers.database_url


def test_second_call_reuses_servers(data_dir, ports):
    first = _start(data_dir, ports)
    second = _start(data_dir, ports)

    assert second.redis_url == first.redis_url
    assert second.database_url == first.database_url
    assert second.redis_pid is None
    assert second.postgres_pid is None

    # The second handle started nothing, so stopping it leaves both servers up.
    stop_servers(second)
    assert redis.Redis.from_url(first.redis_url).ping() is True
    assert _fetch(first.database_url, "SELECT 1")[0][0] == 1

    stop_servers(first)
    assert first.redis_pid is None
    assert first.postgres_pid is None
    assert not _port_open(ports["redis_port"])
    assert not _port_open(ports["pg_port"])


def test_restart_keeps_data(data_dir, ports):
    first = _start(data_dir, ports)
    _execute(
        first.database_url,
        "CREATE TABLE visits (id int PRIMARY KEY, path text)",
        "INSERT INTO visits VALUES (1, '/pricing')",
    )
    redis.Redis.from_url(first.redis_url).set("site:1:name", "example")
    stop_servers(first)

    second = _start(data_dir, ports)

    assert second.database_url == first.database_url
    assert isinstance(second.postgres_pid, int)
    assert isinstance(second.redis_pid, int)
    rows = _fetch(second.database_url, "SELECT id, path FROM visits")
    assert [tuple(row) for row in rows] == [(1, "/pricing")]
    assert redis.Redis.from_url(second.redis_url).get("site:1:name") == b"example"


def test_restart_after_kill9(data_dir, ports):
    first = _start(data_dir, ports)
    _execute(first.database_url, "CREATE TABLE visits (id int)", "INSERT INTO visits VALUES (7)")
    client = redis.Redis.from_url(first.redis_url)
    client.set("kept", "1")
    # appendfsync everysec: wait past one fsync so the key is on disk before SIGKILL.
    time.sleep(1.5)
    os.kill(first.redis_pid, signal.SIGKILL)
    os.kill(first.postgres_pid, signal.SIGKILL)
    _wait_for_exit(first.redis_pid)
    _wait_for_exit(first.postgres_pid)

    # The leftover postmaster.pid now names a live process that is not PostgreSQL, as after
    # a reboot that reused the pid. PostgreSQL alone would refuse to start.
    pid_path = data_dir / "postgres" / "postmaster.pid"
    lines = pid_path.read_text().splitlines()
    pid_path.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    second = _start(data_dir, ports)

    assert second.redis_pid not in (None, first.redis_pid)
    assert second.postgres_pid not in (None, first.postgres_pid)
    assert _fetch(second.database_url, "SELECT id FROM visits")[0][0] == 7
    assert redis.Redis.from_url(second.redis_url).get("kept") == b"1"


def test_responding_urls_used_as_is(data_dir, ports, tmp_path):
    running = _start(data_dir, ports)
    other_dir = tmp_path / "unused"

    servers = ensure_servers(running.redis_url, running.database_url, other_dir)

    assert servers.redis_url == running.redis_url
    assert servers.database_url == running.database_url
    assert servers.redis_pid is None
    assert servers.postgres_pid is None
    assert not other_dir.exists()


def test_unreachable_urls_fall_back_to_embedded(data_dir, ports):
    closed_port = _free_port(set(ports.values()))

    servers = ensure_servers(
        f"redis://127.0.0.1:{closed_port}/0",
        f"postgresql://weir:secret@127.0.0.1:{closed_port}/weir",
        data_dir,
        **ports,
    )

    assert servers.redis_url == f"redis://127.0.0.1:{ports['redis_port']}/0"
    assert servers.database_url.endswith(f"@127.0.0.1:{ports['pg_port']}/weir")
    assert isinstance(servers.redis_pid, int)
    assert isinstance(servers.postgres_pid, int)


def test_busy_port_stops_started_servers(data_dir, ports):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", ports["pg_port"]))
        listener.listen()

        with pytest.raises(EmbeddedServerError, match="already in use"):
            _start(data_dir, ports)

    # Redis started before the PostgreSQL port check failed, and was stopped again.
    assert not _port_open(ports["redis_port"])
    assert embedded.server_status(data_dir) == {"redis": None, "postgres": None}


def test_cli_start_status_stop(data_dir, ports, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    options = [
        "--data-dir",
        str(data_dir),
        "--redis-port",
        str(ports["redis_port"]),
        "--pg-port",
        str(ports["pg_port"]),
    ]

    assert embedded.main(["start", *options]) == 0
    started = capsys.readouterr().out.splitlines()
    assert started[0] == f"REDIS_URL=redis://127.0.0.1:{ports['redis_port']}/0"
    assert started[1].startswith("DATABASE_URL=postgresql://weir:")

    assert embedded.main(["status", *options]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"redis: running url=redis://127.0.0.1:{ports['redis_port']}/0"
    assert status[1] == f"postgres: running url={started[1].removeprefix('DATABASE_URL=')}"

    assert embedded.main(["stop", *options]) == 0
    stopped = capsys.readouterr().out.splitlines()
    assert stopped[0].startswith("redis: stopped pid=")
    assert stopped[1].startswith("postgres: stopped pid=")

    assert embedded.main(["status", *options]) == 3
    assert capsys.readouterr().out.splitlines() == ["redis: not running", "postgres: not running"]
