"""Stopping asyncio tasks without losing the stopper's own cancellation.

The usual idiom, ``task.cancel()`` and then ``await task`` under ``contextlib.suppress(asyncio.CancelledError)``,
cannot tell the task's cancellation from the caller's: if whoever called ``stop()`` is itself cancelled while the
task is still unwinding (a writer flushing its close frame, a listener closing its database connection), the
suppression swallows that too, and the caller goes on as if nobody had asked it to stop. A shutdown that cancels
a server then finds it still running. ``cancel_and_wait`` waits with ``asyncio.wait``, which never raises what the
tasks raise, so a ``CancelledError`` that reaches the caller is always the caller's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel every task given (``None`` entries are skipped) and wait until all of them have finished.

    Raises the first exception, in the order given, that a task ended with other than its cancellation (every one
    is retrieved, so asyncio logs none as never retrieved). If the caller is cancelled while waiting,
    ``CancelledError`` is raised at once; the tasks stay cancelled and finish on their own.
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    errors = [error for task in pending if not task.cancelled() and (error := task.exception()) is not None]
    if errors:
        raise errors[0]
