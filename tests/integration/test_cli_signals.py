"""
Signals during ``evbus publish``: the first SIGINT or SIGTERM stops the bus
within its timeout, dead-letters what was not delivered, prints the summary
and exits 130 / 143; a second one exits at once. Never a traceback.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.brokers import _free_port
from tests.integration.test_cli import assert_clean

pytestmark = pytest.mark.integration

EVBUS = os.path.join(os.path.dirname(sys.executable), "evbus")
EVENTS = 5000


def _start(tmp_path, port: int, spool: bool = False) -> subprocess.Popen:
    """evbus publish of EVENTS events from a file to a RabbitMQ profile on ``port`` (with the spool on)."""
    acct = tmp_path / "acct.yml"
    acct.write_text(
        yaml.safe_dump({"pika": {"default": {"connection": {"url": f"amqp://guest:guest@127.0.0.1:{port}/"},
                                             "routing_key": "evbus-signals"}}})
    )
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(EVENTS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    env.update(EVBUS_STOP_TIMEOUT="1", EVBUS_DEAD_LETTER_FILE=str(tmp_path / "dead.jsonl"), EVBUS_RETRY_SECONDS="60")
    if spool:
        env.update(EVBUS_SPOOL=str(tmp_path / "spool"), EVBUS_SPOOL_SYNC="full")
    return subprocess.Popen(
        [EVBUS, "publish", "--acct-file", str(acct), "--file", str(events)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True,
    )


def _wait_started(proc: subprocess.Popen, tmp_path, timeout: float = 30, log=None, after: float = 0.0):
    """
    Wait until the command has loaded its config (it writes its log file then)
    and a little more for it to start putting; a signal may come at any moment
    after that, the checks hold either way.
    """
    log = log or tmp_path / "evbus.log"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and log.stat().st_size and os.path.getmtime(log) > after:
            time.sleep(0.5)
            return
        time.sleep(0.05)


def _read_until(proc: subprocess.Popen, text: str, timeout: float = 10) -> str:
    """:return: What the command wrote on stderr up to ``text`` at least (within ``timeout`` seconds)"""
    import selectors

    read = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()  # read raw: a buffered read would keep what select() cannot see
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while text.encode() not in read:
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"no {text!r} on stderr within {timeout} s: {read!r}"
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr ended before {text!r}: {read!r}"
            read += chunk
    return read.decode()


def _dead_letters(tmp_path) -> int:
    path = tmp_path / "dead.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("spool", [False, True], ids=["", "spool"])
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_publish_and_dead_letters_the_rest(tmp_path, signum, status, spool):
    """
    A broker that is down: nothing can be delivered. The summary's count of
    events put is what the bus queued (with spool_sync full, a put the signal
    cancels while it waits for its sync has queued its event already).
    """
    proc = _start(tmp_path, _free_port(), spool)
    _wait_started(proc, tmp_path)
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == status, err
    assert_clean(err)
    # stopped within the timeout (1 s) and the closing grace
    assert took < 1 + 2 * 3 + 2
    summary = [line for line in err.splitlines() if "event(s) put" in line]
    assert summary, err
    put = int(re.search(r"(\d+)(?: of \d+)? event\(s\) put", summary[-1]).group(1))
    assert signal.Signals(signum).name in err
    assert put > 0
    # every event put was dead-lettered: nothing went without a record
    assert _dead_letters(tmp_path) == put
    assert f"{put} failed and dead-lettered" in summary[-1]
    # repeated failures are summarized, not written once per event
    assert len(err.splitlines()) < 20, err


def test_a_second_signal_exits_at_once(tmp_path):
    proc = _start(tmp_path, _free_port())
    _wait_started(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.monotonic() - sent < 2
    assert "Traceback" not in err
    assert "again: exiting now" in err


def test_a_second_signal_with_the_spool_says_what_stays_in_it(tmp_path):
    """With the spool on, an exit at once loses nothing: what it did not deliver stays in the spool, and it says so."""
    from evbus.spool import Spool

    proc = _start(tmp_path, _free_port(), spool=True)
    _wait_started(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    before = _read_until(proc, "SIGINT: stopping")  # the first one is taken: the second is a second
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = before + err
    assert proc.returncode == 130
    assert_clean(err)
    found = re.search(r"again: exiting now; (\d+) event\(s\) not delivered yet stay in the spool", err)
    assert found, err
    assert "are lost" not in err
    spool = Spool(str(tmp_path / "spool"))
    try:
        # what settled before the exit is marked done: the next start re-delivers what the line says
        assert len(spool.left_over()) == int(found.group(1)) > 0
    finally:
        spool.close()


def test_a_signal_stops_replay_and_keeps_every_dead_letter_once(tmp_path):
    """Replay to a broker that is down, interrupted: each dead letter is in the store once, as before."""
    proc = _start(tmp_path, _free_port())
    _wait_started(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    before = _dead_letters(tmp_path)
    assert before > 0
    ids = sorted(json.loads(line)["id"] for line in (tmp_path / "dead.jsonl").read_text().splitlines())

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    env.update(EVBUS_STOP_TIMEOUT="1", EVBUS_DEAD_LETTER_FILE=str(tmp_path / "dead.jsonl"), EVBUS_RETRY_SECONDS="60")
    replay = subprocess.Popen(
        [EVBUS, "replay", "--acct-file", str(tmp_path / "acct.yml")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True,
    )
    # the broker is down: the replay cannot end by itself
    _wait_started(replay, tmp_path, log=tmp_path / "evbus.log", after=os.path.getmtime(tmp_path / "evbus.log"))
    replay.send_signal(signal.SIGINT)
    _, err = replay.communicate(timeout=30)
    assert replay.returncode == 130, err
    assert "Traceback" not in err and "replay stopped" in err
    after = sorted(json.loads(line)["id"] for line in (tmp_path / "dead.jsonl").read_text().splitlines())
    assert after == ids


def _reading_stdin(proc: subprocess.Popen, timeout: float = 30) -> bool:
    """Wait until the command blocks in a read of its stdin (Linux: /proc/PID/syscall, read(0, ...))."""
    read_numbers = {"x86_64": "0", "aarch64": "63"}
    number = read_numbers.get(os.uname().machine)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/syscall") as status:
                fields = status.read().split()
        except OSError:
            fields = []
        if len(fields) > 1 and fields[0] == number and int(fields[1], 16) == 0:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="reads /proc/PID/syscall of x86_64 or aarch64")
@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_events_are_read_from_stdin_says_so(tmp_path, signum, status):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    proc = subprocess.Popen(
        [EVBUS, "publish"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, cwd=tmp_path, text=True,
    )
    try:
        assert _reading_stdin(proc), "the command never read its stdin"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == status, err
    assert err.strip() == f"evbus: {signal.Signals(signum).name}: stopped before any event was put"
