"""ops/deploy/healthcheck.py, the image's HEALTHCHECK: which /health it requests, and what each response means."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.deploy.deploy_files import DEPLOY

_spec = importlib.util.spec_from_file_location("weir_healthcheck", DEPLOY / "healthcheck.py")
healthcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthcheck)


@pytest.mark.parametrize(
    ("argv", "env", "urls"),
    [
        (["/opt/weir/bin/python", "/opt/weir/bin/weir", "collector"], {}, ["http://127.0.0.1:4001/health"]),
        (["weir", "collector", "--port", "5001"], {"PORT": "6001"}, ["http://127.0.0.1:5001/health"]),
        (["weir", "collector", "--port=5002"], {}, ["http://127.0.0.1:5002/health"]),
        (["weir", "collector"], {"PORT": "6001"}, ["http://127.0.0.1:6001/health"]),
        (["weir", "collector", "--host", "10.1.2.3"], {}, ["http://10.1.2.3:4001/health"]),
        (["weir", "api"], {"HOST": "0.0.0.0"}, ["http://127.0.0.1:4002/health"]),
        (["weir", "realtime"], {}, ["http://127.0.0.1:4003/health"]),
        (["weir", "processor"], {"PORT": "9999"}, ["http://127.0.0.1:4010/health"]),
        (["weir", "processor"], {"METRICS_PORT": "4711"}, ["http://127.0.0.1:4711/health"]),
        (["weir", "processor"], {"HOST": "10.1.2.4"}, ["http://10.1.2.4:4010/health"]),
        (["weir", "processor", "--metrics-port", "0"], {}, []),
        (["weir", "api", "--host", "::1"], {}, ["http://[::1]:4002/health"]),
        (["weir", "collector"], {"HOST": "fe80::1%eth0"}, ["http://[fe80::1%25eth0]:4001/health"]),
        (["weir", "realtime", "--host", "[::1]"], {}, ["http://[::1]:4003/health"]),
        (["weir", "api"], {"HOST": "::"}, ["http://[::1]:4002/health"]),
        (["weir", "realtime", "--host", "[::]"], {}, ["http://[::1]:4003/health"]),
        (["python", "-m", "ops.cli", "api", "--port", "7002"], {}, ["http://127.0.0.1:7002/health"]),
        (["weir", "up", "--api-port", "7002"], {},
         ["http://127.0.0.1:4001/health", "http://127.0.0.1:7002/health", "http://127.0.0.1:4003/health",
          "http://127.0.0.1:4010/health"]),
        (["weir", "up", "--processor-metrics-port", "0", "--realtime-port", "7003"], {"HOST": "10.1.2.5"},
         ["http://10.1.2.5:4001/health", "http://10.1.2.5:4002/health", "http://10.1.2.5:7003/health"]),
        (["weir", "schema", "check"], {}, []),
        (["weir", "import-logs", "--site", "a.example", "x.log"], {}, []),
        (["weir"], {}, []),
    ],
    ids=["collector-default", "option-beats-env", "option-equals", "env-port", "host-option", "api-any-address",
         "realtime", "processor-ignores-port", "processor-metrics-port", "processor-host", "processor-port-off",
         "ipv6-option", "ipv6-zone-env", "ipv6-bracketed", "ipv6-any-address", "ipv6-any-address-bracketed",
         "python-m", "up", "up-host-env", "schema", "import-logs", "no-command"],
)
def test_health_urls_follow_service_settings(argv, env, urls):
    args = healthcheck.weir_arguments(argv)

    assert healthcheck.health_urls(args, env) == urls


def test_other_programs_are_not_weir():
    assert healthcheck.weir_arguments(["/usr/sbin/nginx", "-g", "daemon off;"]) is None
    assert healthcheck.weir_arguments(["/sbin/docker-init", "--", "weir", "api"]) == ["api"]


def test_processes_lists_pid_one_first(tmp_path: Path):
    for pid, argv, environ in ((7, b"/usr/bin/sleep\x0060\x00", b"A=1\x00"),
                               (1, b"/opt/weir/bin/python\x00/opt/weir/bin/weir\x00api\x00", b"PORT=5002\x00X=a=b\x00"),
                               (3, b"", b"")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(argv)
        (tmp_path / str(pid) / "environ").write_bytes(environ)
    (tmp_path / "self").mkdir()

    found = list(healthcheck.processes(tmp_path))

    assert found == [(["/opt/weir/bin/python", "/opt/weir/bin/weir", "api"], {"PORT": "5002", "X": "a=b"}),
                     (["/usr/bin/sleep", "60"], {"A": "1"})]


async def test_check_passes_on_healthy_service(stack):
    ok, message = await asyncio.to_thread(healthcheck.check, f"{stack.collector_url}/health")

    assert ok, message
    assert message.endswith("answered 200")


async def test_check_fails_when_nothing_listens():
    url = f"http://127.0.0.1:{free_port()}/health"

    ok, message = await asyncio.to_thread(healthcheck.check, url)

    assert not ok
    assert message.startswith(f"{url} failed:")


async def test_check_fails_on_503():
    async def unhealthy(_request: web.Request) -> web.Response:
        return web.json_response({"status": "unhealthy", "checks": {"redis": "failed: timed out"}}, status=503)

    app = web.Application()
    app.router.add_get("/health", unhealthy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        ok, message = await asyncio.to_thread(healthcheck.check, f"http://127.0.0.1:{port}/health")
    finally:
        await runner.cleanup()

    assert not ok
    assert "answered 503" in message
    assert "unhealthy" in message


@pytest.mark.parametrize("host", [" ", "a b", "[::1", "1.2.3.4:80"],
                         ids=["space", "inner-space", "open-bracket", "port"])
def test_check_fails_on_invalid_host(host):
    [url] = healthcheck.health_urls(["realtime"], {"HOST": host})

    ok, message = healthcheck.check(url)

    assert not ok
    assert message.startswith(f"{url} is not a valid URL: ")


def test_port_not_a_number_one_line(monkeypatch, capsys):
    monkeypatch.setattr(healthcheck, "processes", lambda: iter([(["weir", "collector"], {"PORT": "http"})]))

    status = healthcheck.main()

    assert status == 1
    assert capsys.readouterr().err == ("cannot tell the health port of `weir collector`: invalid literal for int() "
                                       "with base 10: 'http'; set its port to a number\n")
