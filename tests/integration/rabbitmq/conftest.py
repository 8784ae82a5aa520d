"""RabbitMQ on 127.0.0.1:5672 (guest/guest), and an independent aio-pika consumer."""
import asyncio
import uuid

import pytest

from tests.conftest import service

URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def rabbitmq():
    service("127.0.0.1", 5672, "RabbitMQ")
    return URL


class Consumer:
    """An aio-pika connection of the test's own, with queues it declared."""

    def __init__(self, connection, channel):
        self.connection = connection
        self.channel = channel

    async def queue(self, exchange: str | None = None, binding: str | None = None) -> str:
        """Declare an auto-deleted queue (bound to ``exchange`` with ``binding`` when given)."""
        name = f"evbus-test-{uuid.uuid4().hex[:12]}"
        queue = await self.channel.declare_queue(name, auto_delete=True, durable=False)
        if exchange:
            await queue.bind(exchange, routing_key=binding or name)
        return name

    async def take(self, name: str, count: int, timeout: float = 20.0) -> list:
        """Take ``count`` messages from a queue, failing after ``timeout`` seconds."""
        queue = await self.channel.get_queue(name)
        messages = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if loop.time() > deadline:
                    pytest.fail(f"only {len(messages)} of {count} messages arrived in {name} within {timeout} s")
                await asyncio.sleep(0.01)
                continue
            messages.append(message)
        return messages

    async def empty(self, name: str) -> bool:
        queue = await self.channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count == 0


@pytest.fixture
async def amqp(rabbitmq):
    import aio_pika

    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel()
    yield Consumer(connection, channel)
    await connection.close()
