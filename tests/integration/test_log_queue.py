"""The log.queue handler puts log records on the bus, without feeding on itself."""
import logging
import logging.handlers

import pytest

from tests.conftest import add_ingress
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def root_queue_handler(hub):
    """A QueueHandler from hub.log.queue.wrapper on the root logger, removed afterwards."""
    root = logging.getLogger()
    handler = logging.handlers.QueueHandler(hub.log.queue.wrapper(profile="logger"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.parametrize("evbus_profiles", [{"internal": {"logger": {"routing_key": "logs"}}}])
async def test_log_records_become_events(evbus_capture, root_queue_handler):
    logging.getLogger("my.module").warning("disk %s is full", "/var")
    await evbus_capture.settle()
    [event] = evbus_capture.bodies(profile="logger", routing_key="logs")
    assert set(event) == {"message", "module", "level", "timestamp"}
    assert "disk /var is full" in event["message"]
    assert event["level"] == "WARNING"
    assert event["timestamp"]


async def test_records_before_the_loop_are_kept(hub, root_queue_handler):
    logging.getLogger("early").warning("before any loop")
    assert hub.evbus.BUS.qsize() == 1


async def test_failures_of_the_bus_are_not_fed_back(hub, running, root_queue_handler, caplog):
    """A failing destination that also takes the log events: its error log must not become an event."""
    add_ingress(hub, "failing")
    await running({"failing": {"*": {}}})
    await hub.evbus.broker.put(body={"n": 1}, profile="app")
    await wait_for(lambda: hub.evbus.broker.stats()["lanes"][0]["failed"] == 1, 5, "the failure")
    assert "failed to publish" in caplog.text
    assert hub.evbus.broker.stats()["put"] == 1
    assert hub.ingress.failing.CALLS == 3


async def test_closed_bus_does_not_break_logging(hub, running, root_queue_handler, capsys):
    await running({"internal": {"logger": {}}})
    await hub.evbus.init.stop()
    logging.getLogger("late").warning("after stop")
    assert "Logging error" not in capsys.readouterr().err


def test_setup_adds_a_queue_handler(hub):
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        hub.log.queue.setup(
            {
                "log_level": "info",
                "log_fmt_console": "%(message)s",
                "log_fmt_logfile": "%(message)s",
                "log_datefmt": "%H:%M:%S",
                "log_handler_options": ["profile=mylogs"],
            }
        )
        added = [h for h in root.handlers if h not in before]
        queue_handlers = [h for h in added if isinstance(h, logging.handlers.QueueHandler)]
        assert len(queue_handlers) == 1
        assert queue_handlers[0].queue.profile == "mylogs"
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
