"""The durable spool: what put() returned for survives the process."""
import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.brokers import URL
from tests.conftest import add_ingress
from tests.conftest import sqlite_spool
from tests.conftest import take_json

pytestmark = pytest.mark.integration

CHILD = pathlib.Path(__file__).parent / "spool_child" / "child.py"


async def pika_acct(tmp_path, amqp, queue: str, extra: str = "") -> tuple:
    """:return: A durable queue, declared, and an acct file of a pika profile that publishes to it"""
    declared = await amqp.channel.declare_queue(queue, durable=True)
    acct = tmp_path / "acct.yml"
    acct.write_text(f"pika:\n  default:\n    connection:\n      url: {URL}\n    routing_key: {queue}\n{extra}")
    return declared, acct


def child_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVBUS_")}
    env["EVBUS_DEAD_LETTER_FILE"] = str(tmp_path / "dead.jsonl")
    return env


def start_child(tmp_path, spool, acct, *args) -> subprocess.Popen:
    """The publishing child (spool_child/child.py), its output to read as it runs."""
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(spool), str(acct), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(tmp_path), cwd=tmp_path,
    )


def start_again(tmp_path, spool, acct) -> int:
    """Start the child again on the spool with nothing new to put; :return: how many events it re-delivered"""
    again = subprocess.run(
        [sys.executable, str(CHILD), str(spool), str(acct), "0"],
        capture_output=True, text=True, env=child_env(tmp_path), cwd=tmp_path, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    return json.loads(again.stdout.split("stopped", 1)[1])


def use_spool(hub, monkeypatch, path):
    monkeypatch.setenv("EVBUS_SPOOL", str(path))
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)


async def test_settled_events_leave_the_spool(hub, running, monkeypatch, tmp_path):
    use_spool(hub, monkeypatch, tmp_path / "spool.db")
    await running({"internal": {"default": {}}})
    for n in range(1000):
        await hub.evbus.broker.put(body=n)
    await hub.evbus.broker.put(body="nobody", profile="unmatched")
    assert await take_json(await hub.ingress.internal.get(), 1000) == list(range(1000))
    await hub.evbus.init.stop()
    stats = hub.evbus.broker.stats()
    assert stats["spool_depth"] == 0 and stats["redelivered"] == 0
    # Nothing live at the stop: the file is cut to its header (no space kept reserved)
    assert (tmp_path / "spool.db").stat().st_size == 16
    # and the next start appends to it again
    await running({"internal": {"default": {}}})
    await hub.evbus.broker.put(body="again")
    assert await take_json(await hub.ingress.internal.get(), 1) == ["again"]
    await hub.evbus.init.stop()
    assert hub.evbus.broker.stats()["spool_depth"] == 0


async def test_a_new_hub_redelivers_what_the_old_one_left(hub, running, monkeypatch, tmp_path):
    """The first hub's destination never confirms (as if the process died); the next hub delivers."""
    spool = tmp_path / "spool.db"
    add_ingress(hub, "hang")
    use_spool(hub, monkeypatch, spool)
    await running({"hang": {"default": {}}})
    for n in range(20):
        await hub.evbus.broker.put(body=n)
    assert hub.evbus.broker.stats()["spool_depth"] == 20
    # The first process "dies": its lock on the spool goes with it
    hub.evbus.broker.STATE.spool.close()

    import pop.hub

    second = pop.hub.Hub()
    second.pop.sub.add(dyne_name="evbus")
    second.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    second.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
    contexts = await second.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    listener = asyncio.create_task(second.evbus.init.start(contexts))
    await second.evbus.init.join(timeout=5)
    assert await take_json(await second.ingress.internal.get(), 20) == list(range(20))
    await second.evbus.init.stop()
    await asyncio.wait_for(listener, 10)
    assert second.evbus.broker.stats()["redelivered"] == 20
    assert second.evbus.broker.stats()["spool_depth"] == 0


async def test_a_spool_in_use_is_a_clear_error(hub, monkeypatch, tmp_path):
    from evbus.exc import ConfigError
    from evbus.spool import Spool

    holder = Spool(str(tmp_path / "spool.db"))
    try:
        with pytest.raises(ConfigError) as info:
            use_spool(hub, monkeypatch, tmp_path / "spool.db")
            await hub.evbus.broker.init()
        assert "spool.db" in str(info.value)
    finally:
        holder.close()


async def test_an_old_sqlite_spool_is_delivered_by_the_next_start(hub, running, monkeypatch, tmp_path):
    """A spool an older evbus (SQLite) left: migrated at open, its events re-delivered first, in order."""
    path = tmp_path / "spool.db"
    rows = [(f"old-{n}", "default", None, "application/json", 1.0 + n, json.dumps(n).encode()) for n in range(5)]
    sqlite_spool(path, rows).close()
    use_spool(hub, monkeypatch, path)
    await running({"internal": {"default": {}}})
    await hub.evbus.broker.put(body="new")
    assert await take_json(await hub.ingress.internal.get(), 6) == [0, 1, 2, 3, 4, "new"]
    await hub.evbus.init.stop()
    stats = hub.evbus.broker.stats()
    assert stats["redelivered"] == 5 and stats["spool_depth"] == 0


async def test_a_record_cut_short_is_logged_at_start(hub, running, monkeypatch, tmp_path, caplog):
    from evbus.spool import Spool
    from evbus.types import Event

    path = tmp_path / "spool.db"
    left = Spool(str(path))
    left.add(Event(body=b'"kept"'))
    left.close()
    with open(path, "ab") as file:
        file.write(b"\x40\x00\x00\x00torn")
    use_spool(hub, monkeypatch, path)
    await running({"internal": {"default": {}}})
    assert await take_json(await hub.ingress.internal.get(), 1) == ["kept"]
    assert "ended in a record cut short" in caplog.text and "8 byte(s) dropped" in caplog.text


async def test_full_put_returns_once_synced_and_puts_together_share_syncs(hub, running, monkeypatch, tmp_path):
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    monkeypatch.setenv("EVBUS_SPOOL_SYNC", "full")
    use_spool(hub, monkeypatch, tmp_path / "spool.db")
    await running({"internal": {"default": {}}})
    put = hub.evbus.broker.put
    for n in range(10):
        before = len(synced)
        await put(body=n)
        assert len(synced) > before
    before = len(synced)
    await asyncio.gather(*(put(body=n) for n in range(10, 60)))
    assert len(synced) - before < 50
    assert await take_json(await hub.ingress.internal.get(), 60) == list(range(60))


async def test_sigkill_mid_stream_loses_nothing_put_returned_for(tmp_path, amqp):
    """
    A publishing process is killed with SIGKILL while events flow to RabbitMQ;
    started again on the same spool, it delivers every event whose put() returned.
    """
    declared, acct = await pika_acct(tmp_path, amqp, f"evbus-spool-{time.time_ns()}", "    persistent: true\n")
    spool = tmp_path / "spool.db"
    child = start_child(tmp_path, spool, acct, 20000)
    returned = []
    try:
        for line in child.stdout:
            if line.strip().isdigit():
                returned.append(int(line))
            if len(returned) >= 5000:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert len(returned) >= 5000
    # Started again with nothing new to put: it re-delivers what the spool holds
    redelivered = start_again(tmp_path, spool, acct)
    seen = set()
    while True:
        message = await declared.get(no_ack=True, fail=False)
        if message is None:
            break
        seen.add(json.loads(message.body))
    await declared.delete(if_unused=False, if_empty=False)
    missing = sorted(set(returned) - seen)
    assert not missing, f"{len(missing)} events put() returned for are lost: {missing[:10]}"
    assert redelivered > 0  # the kill left a backlog that the second run delivered


async def test_what_a_broker_confirmed_is_done_in_the_spool_without_another_put(tmp_path, amqp):
    """
    Events a RabbitMQ lane published (confirmed in its task, after the listener
    handed them on) are marked done in the spool as they are confirmed, not at
    the next put: a SIGKILL once all are published re-delivers fewer than one
    batch of "done" (DONE_BATCH), not the events confirmed last.
    """
    from evbus.spool import DONE_BATCH

    declared, acct = await pika_acct(tmp_path, amqp, f"evbus-spool-done-{time.time_ns()}")
    spool = tmp_path / "spool.db"
    child = start_child(tmp_path, spool, acct, 3000, "hold")
    try:
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "published":
                break
        assert lines[-1] == "published", lines[-3:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    redelivered = start_again(tmp_path, spool, acct)
    await declared.delete(if_unused=False, if_empty=False)
    assert redelivered < DONE_BATCH


async def test_left_over_events_no_profile_matches_stay_in_the_spool(hub, running, monkeypatch, tmp_path, caplog):
    """A start whose profiles match none of what a crash left keeps it, says so, and the next start delivers it."""
    import pop.hub

    spool = tmp_path / "spool.db"
    add_ingress(hub, "hang")
    use_spool(hub, monkeypatch, spool)
    await running({"hang": {"default": {}}})
    for n in range(5):
        await hub.evbus.broker.put(body=n, profile="orders")
    hub.evbus.broker.STATE.spool.close()  # the process "dies"

    async def restart(acct_data: dict):
        other = pop.hub.Hub()
        other.pop.sub.add(dyne_name="evbus")
        other.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
        other.pop.loop.CURRENT_LOOP = asyncio.get_running_loop()
        contexts = await other.evbus.acct.profiles(acct_data=acct_data)
        listener = asyncio.create_task(other.evbus.init.start(contexts))
        await other.evbus.init.join(timeout=5)
        return other, listener

    second, listener = await restart({"internal": {"billing": {}}})
    await second.evbus.init.stop()
    await asyncio.wait_for(listener, 10)
    assert second.evbus.broker.stats()["spool_depth"] == 5
    assert any("match no profile of this start" in r.getMessage() for r in caplog.records)
    second.evbus.broker.STATE.spool.close()

    third, listener = await restart({"internal": {"orders": {}}})
    assert await take_json(await third.ingress.internal.get(), 5) == list(range(5))
    await third.evbus.init.stop()
    await asyncio.wait_for(listener, 10)
    assert third.evbus.broker.stats()["spool_depth"] == 0
