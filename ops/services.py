"""Run Weir's services in this process until SIGTERM or SIGINT, then stop them cleanly.

Stopping order: the processors' agents finish the batch in hand, commit and acknowledge; then
the HTTP services stop accepting and finish the requests in flight. A batch still running after
the processor's STOP_TIMEOUT_S is cancelled: its transaction rolls back and its entries stay
pending, so another consumer or the next start processes them, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web

from ops.errors import CommandError
from sinks.processor import Processor, create_processor_health_app
from weir.tasks import cancel_all_and_wait

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 15.0
"""Seconds aiohttp waits for the requests in flight at a stop, and again after it cancelled them.

Both waits can run out when a request's query waits on a PostgreSQL that does not reply, so a
stop can take twice this plus the pool's close, which must stay within the 40 s grace.
"""


@dataclass
class ServiceSet:
    """HTTP applications with their addresses, and processors, to run together."""

    apps: list[tuple[str, web.Application, str, int, str]] = field(default_factory=list)
    """Name, application, host, port, and the setting that chose the port, for errors."""
    processors: list[tuple[Processor, int, str, str]] = field(default_factory=list)
    reuse_port: bool = False
    """Listen with SO_REUSEPORT. Off by default: with it, a second server started on a port by
    mistake (say, against another database) shares the connections silently instead of failing."""

    def add_app(self, name: str, app: web.Application, host: str, port: int,
                port_setting: str = "PORT or --port") -> None:
        self.apps.append((name, app, host, port, port_setting))

    def add_processor(self, processor: Processor, health_port: int, host: str = "0.0.0.0",
                      port_setting: str = "METRICS_PORT or --metrics-port") -> None:
        """Run `processor`, with its /health and /metrics on `host`:`health_port` unless the port is 0."""
        self.processors.append((processor, health_port, host, port_setting))


def install_stop_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)


async def run_services(services: ServiceSet, stopping: asyncio.Event | None = None,
                       ready: asyncio.Event | None = None, handle_signals: bool = True) -> None:
    """Start every service, wait for `stopping` (or a signal), then stop them in order."""
    stopping = stopping or asyncio.Event()
    if handle_signals:
        install_stop_signals(stopping)
    runners: list[web.AppRunner] = []
    processor_tasks: list[asyncio.Task] = []
    try:
        for processor, health_port, host, port_setting in services.processors:
            if not await processor.start(stopping):
                return  # A stop request came while Redis or PostgreSQL was unreachable.
            if health_port:
                services.add_app("processor", create_processor_health_app(processor), host, health_port, port_setting)
            processor_tasks.append(asyncio.create_task(processor.run(stopping)))
        for name, app, host, port, port_setting in services.apps:
            runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
            await runner.setup()
            runners.append(runner)  # Before the bind, so a failed bind still runs the app's cleanup.
            await _listen(runner, name, host, port, port_setting, services.reuse_port)
            logger.info("service listening service=%s address=http://%s:%d", name, host, port)
        if ready is not None:
            ready.set()

        await _wait_for_stop(stopping, processor_tasks)
    finally:
        stopping.set()
        await _stop_processors(processor_tasks, [entry[0] for entry in services.processors])
        for runner in reversed(runners):
            await runner.cleanup()
        for entry in services.processors:
            await entry[0].close()
        logger.info("services stopped")


async def _listen(runner: web.AppRunner, name: str, host: str, port: int, port_setting: str,
                  reuse_port: bool) -> None:
    """Bind `runner`'s application to `host`:`port`. Raise CommandError when the address cannot be used."""
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    except OSError as error:  # socket.gaierror too: an unknown host name or a malformed address
        raise CommandError(f"{name} failed to listen on host {host!r} port {port}: {error.strerror or error}. "
                           f"Set HOST or --host to a local address or host name, and {port_setting} to a free "
                           "port") from None


async def _stop_processors(tasks: list[asyncio.Task], processors: list[Processor]) -> None:
    """Wait for the processors' batches in hand, cancelling those still running after the stop timeout."""
    if not tasks:
        return
    timeout_s = max(processor.settings.STOP_TIMEOUT_S for processor in processors)
    done, running = await asyncio.wait(tasks, timeout=timeout_s)
    if running:
        logger.error("batches still running %g s after the stop request are cancelled; their entries stay "
                     "pending and are processed after a restart or by another replica consumers=%s", timeout_s,
                     ",".join(name for processor in processors for name in processor.consumer_names))
        await cancel_all_and_wait(running)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            logger.error("processor ended with an error error=%r", task.exception())


async def _wait_for_stop(stopping: asyncio.Event, processor_tasks: list[asyncio.Task]) -> None:
    """Return when stopping is set, or raise when a processor task ended on its own with an error."""
    waiter = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait([waiter, *processor_tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    for task in done:
        if task is not waiter and task.exception() is not None:
            raise task.exception()
