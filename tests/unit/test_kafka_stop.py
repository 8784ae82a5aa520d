"""Stopping a listener's aiokafka consumer, with fakes of what a real broker cannot be made to do on cue."""
import asyncio
import contextlib

import pytest

from evbus.ingress import kafka


class Client:
    def __init__(self):
        self.closed = False

    async def close(self):
        self.closed = True


class Fetcher:
    def __init__(self, tasks):
        self._pending_tasks = set(tasks)


class Consumer:
    """aiokafka's consumer as far as ``_stop`` sees it: ``stop()``, its fetcher's tasks and its client."""

    def __init__(self, stop, tasks=()):
        self._client = Client()
        self._fetcher = Fetcher(tasks)
        self._stop = stop

    async def stop(self):
        await self._stop(self)


async def test_a_fetch_cancelled_inside_stop_leaves_the_rest_to_close():
    """aiokafka's stop() raises its first fetch's CancelledError before it closes the client: evbus closes it."""
    fetches = [asyncio.create_task(asyncio.sleep(60)) for _ in range(2)]

    async def stop(consumer):
        fetches[0].cancel()
        await fetches[0]

    consumer = Consumer(stop, fetches)
    await kafka._stop(consumer)
    assert consumer._client.closed
    assert all(task.cancelled() for task in fetches)


async def test_a_cancel_of_the_caller_is_not_dropped():
    started = asyncio.Event()

    async def stop(consumer):
        started.set()
        await asyncio.sleep(60)

    stopping = asyncio.create_task(kafka._stop(Consumer(stop)))
    await started.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping


async def test_a_cancel_that_stop_swallows_is_raised_after_it():
    """aiokafka awaits its own tasks under suppress(CancelledError): a cancel of the caller that lands there comes back."""
    started = asyncio.Event()
    finished = []

    async def stop(consumer):
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        finished.append(True)

    stopping = asyncio.create_task(kafka._stop(Consumer(stop)))
    await started.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert finished == [True]
