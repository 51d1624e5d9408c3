"""Stop background tasks for certain, although Python 3.11 can lose a cancellation.

On Python 3.11 (asyncio/tasks.py of 3.11.7), `asyncio.wait_for` returns the inner result
instead of raising CancelledError when the cancellation arrives after its inner awaitable
finished but before wait_for resumed. redis-py 5.2 sends every command through `wait_for` when
`socket_timeout` is set, so a task cancelled while it sends a Redis command can go on as if
nothing happened. A caller that cancels such a task once and awaits it then waits forever: a
processor's claim renewal did, which kept its batch's entries from being reclaimed and the
process from stopping.

`shielded` is the other half: a call that must finish although its caller is cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Iterable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECANCEL_AFTER_S = 0.1
"""Seconds to wait for a cancelled task to end before cancelling it again."""


async def cancel_and_wait(task: asyncio.Task, recancel_after_s: float = RECANCEL_AFTER_S) -> None:
    """Cancel `task` and return once it has ended, cancelling it again for as long as it runs on.

    The task's own exception, if it ended with one, is retrieved and dropped: the caller has
    given up on its result. A task whose cleanup after a cancellation takes longer than
    `recancel_after_s` is interrupted in that cleanup by the next cancellation.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=recancel_after_s)
    if not task.cancelled():
        task.exception()


async def cancel_all_and_wait(tasks: Iterable[asyncio.Task], recancel_after_s: float = RECANCEL_AFTER_S) -> None:
    """Cancel every task of `tasks` at once and return once all have ended (see `cancel_and_wait`)."""
    await asyncio.gather(*(cancel_and_wait(task, recancel_after_s) for task in tasks))


async def shielded(awaitable: Awaitable[T], description: str, *args: object) -> T:
    """Return the result of `awaitable`, which a cancellation of the caller does not interrupt.

    A cancelled caller gets CancelledError at once while the call goes on. If that call fails
    later, its error is logged with `description % args`, because no caller awaits it any more and
    asyncio would report it only as "Task exception was never retrieved" when the task is collected.
    The text is formatted only then, as logging does, so the common path of a batch builds no string.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_log_late_failure, description, args))
        raise


def _log_late_failure(description: str, args: tuple, task: asyncio.Future) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.warning(description + " failed after its caller was cancelled error=%r", *args, error)
