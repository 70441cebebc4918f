"""``cancel_and_wait``: a stopper's own cancellation is never swallowed, and a task's own failure is raised.

The case that matters is the one ``contextlib.suppress(CancelledError)`` around ``await task`` gets wrong: the
caller is cancelled while the task it cancelled is still unwinding. The tests make that happen deterministically
(the order of ``call_soon`` callbacks, no sleeps), and the same scenario run through ``PeerStream.stop`` and
``PushHub.stop`` shows the shells use it.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from wgpy.drivers.tasks import cancel_and_wait
from wgpy.management.push import PeerStream


async def _unwinds_slowly(release: asyncio.Event, done: list[str]) -> None:
    """Sleeps until cancelled, then needs ``release`` before it finishes (a writer flushing its close frame)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()
        done.append("unwound")
        raise


def test_the_tasks_are_cancelled_and_waited_for() -> None:
    async def body() -> None:
        release, done = asyncio.Event(), list[str]()
        slow = asyncio.create_task(_unwinds_slowly(release, done))
        quick = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        stopper = asyncio.create_task(cancel_and_wait(slow, None, quick))
        await asyncio.sleep(0)
        assert not stopper.done()  # still waiting for the slow one
        release.set()
        await stopper
        assert slow.cancelled() and quick.cancelled() and done == ["unwound"]
        await cancel_and_wait()
        await cancel_and_wait(None)

    asyncio.run(body())


def test_a_cancellation_of_the_caller_while_a_task_unwinds_reaches_the_caller() -> None:
    async def body() -> None:
        release, done = asyncio.Event(), list[str]()
        slow = asyncio.create_task(_unwinds_slowly(release, done))
        await asyncio.sleep(0)
        after: list[str] = []

        async def stop() -> None:
            await cancel_and_wait(slow)
            after.append("went on")  # must not run: the caller was cancelled

        stopper = asyncio.create_task(stop())
        await asyncio.sleep(0)  # stopper is now waiting for slow, which waits for release
        stopper.cancel()
        finished, _ = await asyncio.wait([stopper], timeout=2.0)  # bounded: swallowed, it would wait for slow
        release.set()  # the task it cancelled still finishes, on its own
        assert stopper in finished and stopper.cancelled() and after == []
        async with asyncio.timeout(5.0):
            with contextlib.suppress(asyncio.CancelledError):
                await slow
        assert slow.cancelled() and done == ["unwound"]

    asyncio.run(body())


def test_the_first_error_in_the_order_given_is_raised_once_every_task_has_finished() -> None:
    async def fails(message: str) -> None:
        raise ValueError(message)

    async def fails_while_unwinding() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    async def body() -> None:
        first = asyncio.create_task(fails("first"))
        second = asyncio.create_task(fails_while_unwinding())
        third = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match=r"^first$"):
            await cancel_and_wait(first, second, third)
        assert second.done() and isinstance(second.exception(), RuntimeError) and third.cancelled()
        again = [asyncio.create_task(fails_while_unwinding()), asyncio.create_task(fails("later"))]
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match=r"^cleanup failed$"):
            await cancel_and_wait(*again)

    asyncio.run(body())


class _Socket:
    """What ``PeerStream`` uses of a WebSocket: ``send_str`` waits for ``release``, cancelled or not (a peer slow to
    take the frame, and a transport that finishes what it started)."""

    closed = False

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def send_str(self, text: str) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            await self.release.wait()
            raise

    async def close(self, **_kwargs: object) -> None:
        return None


@pytest.mark.parametrize("revoking", [False, True])
def test_peer_stream_stop_passes_its_callers_cancellation_on(revoking: bool) -> None:
    """Not revoking: ``stop`` cancels the writer, which is stuck in a send, and the caller is cancelled while it
    unwinds. Revoking: ``stop`` first waits (bounded) for the close frame, and the caller is cancelled there."""

    async def body() -> None:
        ws = _Socket()
        stream = PeerStream("a" * 32, ws, "key")  # type: ignore[arg-type]
        if revoking:
            stream.revoke()
        else:
            assert stream.send_now({"type": "pong"})
        for _ in range(3):
            await asyncio.sleep(0)  # the writer is in send_str
        stopper = asyncio.create_task(stream.stop())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not stopper.done()
        stopper.cancel()
        finished, _ = await asyncio.wait([stopper], timeout=2.0)
        assert stopper in finished and stopper.cancelled()
        ws.release.set()
        async with asyncio.timeout(5.0):
            await stream.stop()  # the writer finishes (cancelled, or having sent its close frame)
        assert stream.closed.is_set()

    asyncio.run(body())
