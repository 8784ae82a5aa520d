"""The tests run on the loop asked for: uvloop with ``--uvloop``, asyncio's own without."""
import asyncio


async def test_the_running_loop_is_the_one_asked_for(request):
    loop = asyncio.get_running_loop()
    if request.config.getoption("uvloop"):
        import uvloop

        assert isinstance(loop, uvloop.Loop)
    else:
        assert type(loop).__module__.startswith("asyncio")


async def test_the_bus_runs_on_that_loop(hub, running):
    await running({"internal": {"default": {"routing_key": "q"}}})
    await hub.evbus.broker.put(body={"n": 1})
    queue = await hub.ingress.internal.get("q")
    assert await asyncio.wait_for(queue.get(), 10) == b'{"n": 1}'
    assert hub.evbus.broker.STATE.loop is asyncio.get_running_loop()
