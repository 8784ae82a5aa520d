"""The evbus command, run as a user runs it."""
import asyncio
import contextlib
import json
import os
import stat
import pathlib
import re
import signal
import subprocess
import sys

import pytest
import yaml

from tests.brokers import MQTT_HOST
from tests.brokers import MQTT_PORT
from tests.brokers import NATS_URL
from tests.brokers import REDIS_URL
from tests.brokers import URL
from tests.brokers import Tansu
from tests.brokers import _free_port
from tests.brokers import unique
from tests.conftest import STRAY

pytestmark = pytest.mark.integration

EVBUS = pathlib.Path(sys.executable).parent / "evbus"


def evbus(*args, stdin: str | None = None, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    full_env.update(env or {})
    out = subprocess.run(
        [str(EVBUS), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
    )
    assert_clean(out.stderr)
    return out


def assert_clean(stderr: str):
    """A command never ends with a traceback or asyncio's complaints about what it left unfinished."""
    for phrase in ("Traceback", *STRAY):
        assert phrase not in stderr, stderr


def lines(out: str) -> list:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_publish_arguments_on_the_embedded_default(tmp_path):
    out = evbus("publish", '{"message": "hello"}', '{"message": "world"}', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [
        {"routing_key": None, "body": {"message": "hello"}},
        {"routing_key": None, "body": {"message": "world"}},
    ]
    assert "2 published" in out.stderr and "0 failed" in out.stderr


def test_publish_json_lines_from_stdin(tmp_path):
    stdin = "".join(json.dumps({"n": n}) + "\n" for n in range(50)) + "\n"
    out = evbus("publish", "--routing-key", "rk", "--profile", "mine", stdin=stdin, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [{"routing_key": "rk", "body": {"n": n}} for n in range(50)]


def test_bad_json_is_a_clear_error(tmp_path):
    out = evbus("publish", "{}", "{oops", cwd=tmp_path)
    assert out.returncode == 2
    assert "argument 2 is not JSON" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_event_files_in_utf8_with_a_byte_order_mark_or_from_stdin_by_dash(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'\xef\xbb\xbf{"n": 1}\n\n{"n": 2}\n')
    out = evbus("publish", "--file", str(events), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [line["body"] for line in lines(out.stdout)] == [{"n": 1}, {"n": 2}]
    out = evbus("publish", "--file", "-", '{"n": 0}', stdin='{"n": 3}\n', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [line["body"] for line in lines(out.stdout)] == [{"n": 0}, {"n": 3}]


def test_an_event_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"n": 1}\n{"n": "\xff"}\n')
    out = evbus("publish", "--file", str(events), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"evbus: {events} line 2 is not UTF-8: byte 8 is 0xff"
    assert out.stdout == ""


def test_the_log_file_is_private(tmp_path):
    """evbus.log is made 0600 (and a wider one tightened): at the debug level it holds message bodies."""
    acct = tmp_path / "acct.yml"
    acct.write_text("pika:\n  down:\n    connection:\n      url: amqp://127.0.0.1:1/\n")
    env = {"EVBUS_RETRY_ATTEMPTS": "1", "EVBUS_DEAD_LETTER_FILE": str(tmp_path / "dead.jsonl")}
    log = tmp_path / "evbus.log"
    for _ in range(2):
        out = evbus("publish", "--acct-file", str(acct), '{"n": 1}', env=env, cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        assert log.stat().st_size and stat.S_IMODE(log.stat().st_mode) == 0o600
        log.chmod(0o644)


def test_the_client_libraries_debug_lines_have_the_secrets_masked(tmp_path):
    """At the debug level aiormq logs the URL it connects to: a password in its query is masked there too."""
    acct = tmp_path / "acct.yml"
    acct.write_text("pika:\n  down:\n    connection:\n      url: amqp://127.0.0.1:1/?password=q-s3cret-pw&login=bob\n")
    env = {"EVBUS_RETRY_ATTEMPTS": "1", "EVBUS_DEAD_LETTER_FILE": str(tmp_path / "dead.jsonl")}
    out = evbus("--log-level", "debug", "publish", "--acct-file", str(acct), '{"n": 1}', env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    log = (tmp_path / "evbus.log").read_text()
    assert "Connecting to: amqp://127.0.0.1:1/?password=***" in log
    assert "q-s3cret-pw" not in out.stderr + log


def test_unknown_serializer_is_a_clear_error(tmp_path):
    out = evbus("--serialize-plugin", "yaml", "publish", "1", cwd=tmp_path)
    assert out.returncode == 2
    assert "Unknown serialize plugin 'yaml'" in out.stderr and "Traceback" not in out.stderr


def test_serializer_by_flag_and_env_and_config_file(tmp_path):
    config = tmp_path / "evbus.yml"
    config.write_text("evbus:\n  serialize_plugin: msgpack\n  match_plugin: regex\n")
    by_flag = evbus("--serialize-plugin", "msgpack", "publish", "[1]", cwd=tmp_path)
    by_env = evbus("publish", "[1]", env={"EVBUS_SERIALIZE_PLUGIN": "msgpack"}, cwd=tmp_path)
    by_file = evbus("--config", str(config), "publish", "[1]", cwd=tmp_path)
    for out in (by_flag, by_env, by_file):
        assert out.returncode == 0, out.stderr
        assert lines(out.stdout) == [{"routing_key": None, "body": [1]}]


def test_profiles_from_an_acct_file(tmp_path):
    acct = tmp_path / "acct.yml"
    acct.write_text("internal:\n  'idem-*':\n    routing_key: idem\n")
    out = evbus("publish", "--profile", "idem-run", "1", env={"ACCT_FILE": str(acct)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [{"routing_key": "idem", "body": 1}]
    # an event that matches no profile goes nowhere: said, and the exit status is 1
    unmatched = evbus("publish", "--profile", "other", "1", env={"ACCT_FILE": str(acct)}, cwd=tmp_path)
    assert unmatched.returncode == 1 and lines(unmatched.stdout) == []
    assert "1 event(s) of profile 'other' matched no acct profile" in unmatched.stderr
    assert "idem-*" in unmatched.stderr


def test_no_subcommand_shows_help(tmp_path):
    out = evbus(cwd=tmp_path)
    assert out.returncode == 2
    assert "publish" in out.stderr


async def test_replay_dead_letters_to_rabbitmq(tmp_path, amqp):
    """Events for a RabbitMQ that is not there are dead-lettered; `evbus replay` delivers them once it is."""
    queue = await amqp.queue()
    dead = tmp_path / "dead.jsonl"
    env = {
        "EVBUS_DEAD_LETTER_FILE": str(dead),
        "EVBUS_RETRY_ATTEMPTS": "2",
        "EVBUS_RETRY_BACKOFF": "0.01",
    }
    down = tmp_path / "down.yml"
    down.write_text(f"pika:\n  default:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:1/\n    routing_key: {queue}\n")
    up = tmp_path / "up.yml"
    up.write_text(f"pika:\n  default:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:5672/\n    routing_key: {queue}\n")

    out = evbus("publish", "--acct-file", str(down), stdin="1\n2\n3\n", env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "3 failed and dead-lettered" in out.stderr
    assert len(dead.read_text().splitlines()) == 3

    out = evbus("replay", "--acct-file", str(up), "--plugin", "pika", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 delivered" in out.stderr
    assert [json.loads(m.body) for m in await amqp.take(queue, 3)] == [1, 2, 3]
    assert dead.read_text() == ""


def test_replay_says_what_it_could_not_do(tmp_path):
    """No file: said, exit 0; a dead letter without a destination: kept, exit 1; lines that are none: counted, kept."""
    dead = tmp_path / "dead.jsonl"
    env = {"EVBUS_DEAD_LETTER_FILE": str(dead)}
    acct = tmp_path / "acct.yml"
    acct.write_text("internal:\n  default: {}\n")
    out = evbus("replay", "--acct-file", str(acct), env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"evbus: no dead letters to replay: there is no file {dead}" in out.stderr
    assert not dead.exists()

    letter = {"id": "e-1", "plugin": "pika", "acct_profile": "gone", "profile": "default", "body": "1"}
    dead.write_text(json.dumps(letter) + "\nnot json\n\n")
    out = evbus("replay", "--acct-file", str(acct), env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "0 dead letter(s) replayed" in out.stderr and "1 kept (no such destination in the profiles)" in out.stderr
    assert f"1 line(s) of {dead} hold no dead letter (not JSON, or not a whole record): left in the file" in out.stderr
    assert dead.read_text() == json.dumps(letter) + "\nnot json\n\n"


def test_profiles_masks_secrets_and_checks_reachability(tmp_path, rabbitmq):
    acct = tmp_path / "acct.yml"
    acct.write_text(
        "pika:\n"
        "  good:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:5672/\n"
        "  bad:\n    connection:\n      host: 127.0.0.1\n      port: 1\n      login: bob\n      password: pr0file-s3cret\n"
        "internal:\n  default: {}\n"
    )
    out = evbus("profiles", "--acct-file", str(acct), "--output", "json", "--timeout", "5", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # one destination is unreachable
    report = json.loads(out.stdout)
    assert report["internal"]["default"]["reachable"] is True
    assert report["pika"]["good"]["reachable"] is True
    assert report["pika"]["bad"]["reachable"] is False
    assert "127.0.0.1" in report["pika"]["bad"]["destination"] and ":1" in report["pika"]["bad"]["destination"]
    assert report["pika"]["bad"]["profile"]["connection"]["password"] == "***"
    assert "pr0file-s3cret" not in out.stdout + out.stderr


@pytest.mark.parametrize("command", ["publish", "profiles"])
def test_output_into_a_reader_that_goes_away(tmp_path, command):
    """
    ``| head -2``: the reader goes away after two lines. No traceback; publish
    still puts every event and says so, and exits as it would have.
    """
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"n": n, "pad": "x" * 200}) + "\n" for n in range(3000)))
    acct = tmp_path / "acct.yml"  # a report larger than a pipe holds
    acct.write_text("internal:\n" + "".join(f"  profile-{n}:\n    routing_key: key-{n}\n" for n in range(2000)))
    args = f'publish --file "{events}"' if command == "publish" else f'profiles --acct-file "{acct}" --output json'
    script = f'"{EVBUS}" {args} 2>"{tmp_path}/err" | head -2 >/dev/null; echo "${{PIPESTATUS[0]}}" >"{tmp_path}/status"'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, timeout=60, check=True)
    err = (tmp_path / "err").read_text()
    assert_clean(err)
    assert "BrokenPipe" not in err
    assert (tmp_path / "status").read_text().strip() == "0", err
    if command == "publish":
        assert "3000 event(s) put" in err, err


def test_profiles_tries_the_destinations_at_once(tmp_path):
    """
    Four profiles on a server that takes the connection and never answers,
    with --timeout 8: each is reported unreachable, all tried at once (one
    after another would take 29 s at least, past the 25 s this run is given).
    """
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel accepts the connections; nobody answers them
    port = server.getsockname()[1]
    acct = tmp_path / "acct.yml"
    acct.write_text(
        "pika:\n"
        + "".join(f"  p{n}:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:{port}/\n" for n in range(3))
        + f"redis:\n  r0:\n    connection:\n      url: redis://127.0.0.1:{port}/0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    try:
        out = subprocess.run(
            [str(EVBUS), "profiles", "--acct-file", str(acct), "--output", "json", "--timeout", "8"],
            capture_output=True, text=True, timeout=25, env=env, cwd=tmp_path,
        )
    finally:
        server.close()
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    entries = [*report["pika"].values(), *report["redis"].values()]
    assert len(entries) == 4 and all(entry["reachable"] is False for entry in entries), entries
    assert all(entry["error"] for entry in entries), entries
    assert [entry["error"] for entry in report["pika"].values()] == ["no connection within 8.0 s"] * 3


def test_profiles_lists_a_provider_with_a_typo_as_not_reachable(tmp_path):
    """A provider close to a served one gets no events: listed with why, exit 1; another program's is left out."""
    acct = tmp_path / "acct.yml"
    acct.write_text("pikaa:\n  orders: {}\n  audit: {}\naws:\n  default:\n    key: x\ninternal:\n  default: {}\n")
    out = evbus("profiles", "--acct-file", str(acct), "--output", "json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert sorted(report) == ["internal", "pikaa"]
    for name in ("orders", "audit"):
        assert report["pikaa"][name]["reachable"] is False
        assert report["pikaa"][name]["error"] == "no ingress plugin serves the acct provider 'pikaa' (did you mean 'pika'?)"

    acct.write_text("aws:\n  default:\n    key: x\ninternal:\n  default: {}\n")
    out = evbus("profiles", "--acct-file", str(acct), "--output", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == ["internal"]


def test_replay_of_a_plugin_that_does_not_exist_is_an_error(tmp_path):
    dead = tmp_path / "dead.jsonl"
    dead.write_text(json.dumps({"id": "e-1", "plugin": "pika", "acct_profile": "default", "body": "1"}) + "\n")
    acct = tmp_path / "acct.yml"
    acct.write_text("internal:\n  default: {}\n")
    for name, hint in (("pikaa", " (did you mean 'pika'?)"), ("PIKA", " (did you mean 'pika'?)"), ("", "")):
        out = evbus("replay", "--acct-file", str(acct), "--plugin", name, env={"EVBUS_DEAD_LETTER_FILE": str(dead)},
                    cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert _error_line(out.stderr) == (
            f"evbus: --plugin '{name}': no such ingress plugin{hint}; "
            "the ingress plugins: internal, kafka, mqtt, nats, pika, redis"
        )
    assert dead.read_text().count("e-1") == 1


def test_profiles_without_configuration(tmp_path):
    out = evbus("profiles", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "internal" in out.stdout and "reachable: true" in out.stdout


def _on_a_terminal(tmp_path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run evbus with stderr on a pseudo-terminal. :return: What it did, and what the terminal got"""
    import pty

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}
    full_env.update(env or {})
    primary, secondary = pty.openpty()
    proc = subprocess.run(
        [str(EVBUS), *args], stdout=subprocess.PIPE, stderr=secondary,
        stdin=subprocess.DEVNULL, env=full_env, cwd=tmp_path, timeout=60,
    )
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    return proc, terminal.decode()


def test_publish_from_a_file_on_a_terminal(tmp_path):
    """A file of JSON lines, with a progress bar when stderr is a terminal (here: a pseudo-terminal)."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(1200)))
    proc, text = _on_a_terminal(tmp_path, "publish", "--file", str(events))
    assert proc.returncode == 0
    assert len(lines(proc.stdout.decode())) == 1200
    # the bar follows deliveries: it ends full, with the events put, published and failed beside it
    last_bar = [part for part in text.split("\r") if "|" in part][-1]
    assert last_bar.lstrip().startswith("100%")
    assert last_bar.rstrip().endswith("| 1200/1200 put, 1200 published, 0 failed")  # (no ", " before the counts)


def test_log_lines_go_above_the_progress_bar(tmp_path):
    """A destination that is down logs while the bar shows: each log line starts a line of its own."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(50)))
    acct = tmp_path / "acct.yml"
    acct.write_text("pika:\n  default:\n    connection:\n      url: amqp://127.0.0.1:1/\n")
    env = {"EVBUS_RETRY_ATTEMPTS": "1", "EVBUS_DEAD_LETTER_FILE": str(tmp_path / "dead.jsonl")}
    proc, text = _on_a_terminal(tmp_path, "publish", "--acct-file", str(acct), "--file", str(events), env=env)
    assert proc.returncode == 1, text
    logged = [part for part in re.split(r"[\r\n]", text) if re.search(r"\[(WARNING|ERROR) *\]", part)]
    assert any("failed to publish on ingress.pika" in part for part in logged), text
    assert all(re.match(r"\[(WARNING|ERROR) *\]", part) for part in logged), logged


def test_publish_file_that_is_missing(tmp_path):
    out = evbus("publish", "--file", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert out.returncode == 2 and "cannot read" in out.stderr


async def test_listen_on_a_rabbitmq_queue(tmp_path, amqp):
    import aio_pika

    queue = await amqp.queue()
    acct = tmp_path / "acct.yml"
    acct.write_text(f"pika:\n  mine:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:5672/\n    routing_key: {queue}\n")
    for n in range(3):
        await amqp.channel.default_exchange.publish(aio_pika.Message(json.dumps({"n": n}).encode()), routing_key=queue)
    loop = asyncio.get_running_loop()
    out = await loop.run_in_executor(
        None, lambda: evbus("listen", "--acct-file", str(acct), "--profile", "mine", "--count", "3", cwd=tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [{"routing_key": queue, "body": {"n": n}} for n in range(3)]


async def test_listen_on_a_kafka_topic(tmp_path, tansu, topic):
    import aiokafka

    acct = tmp_path / "acct.yml"
    acct.write_text(f"kafka:\n  mine:\n    topics: [{topic}]\n    connection:\n      bootstrap_servers: {tansu.bootstrap}\n")
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
    await producer.start()
    try:

        async def publish(attempt: int):
            await producer.send_and_wait(topic, json.dumps({"try": attempt}).encode())

        received = await _listen_while_publishing(tmp_path, acct, publish)
    finally:
        await producer.stop()
    assert all(r["routing_key"] == topic and "try" in r["body"] for r in received)


def test_listen_with_tls_on_a_nats_server_without_it_says_so(tmp_path):
    """The machine's NATS does not speak TLS: listen refuses it, rather than log in in the clear."""
    acct = tmp_path / "acct.yml"
    acct.write_text(f"nats:\n  mine:\n    connection:\n      servers: {NATS_URL}\n    subject: x\n    tls: {{}}\n")
    out = evbus("listen", "--acct-file", str(acct), "--profile", "mine", "--count", "1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "does not require TLS" in out.stderr and "Traceback" not in out.stderr


def test_listen_with_an_unknown_profile(tmp_path):
    acct = tmp_path / "acct.yml"
    acct.write_text("internal:\n  default: {}\n")
    out = evbus("listen", "--acct-file", str(acct), "--profile", "nope", cwd=tmp_path)
    assert out.returncode == 2 and "no acct profile named 'nope' (the profiles: default)" in out.stderr


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EVBUS_", "ACCT_"))}


@contextlib.asynccontextmanager
async def _listening(tmp_path, acct: pathlib.Path, *args: str):
    """``evbus listen`` on the profile ``mine`` of ``acct``, running; killed at the end if it still runs."""
    proc = await asyncio.create_subprocess_exec(
        str(EVBUS), "listen", "--acct-file", str(acct), "--profile", "mine", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=_env(),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _printed(proc, count: int, publish) -> list:
    """
    Call ``publish(attempt)`` until the listener printed ``count`` lines (it
    takes only what is published once it listens).

    :return: The lines, as data
    """
    received = []

    async def read():
        while len(received) < count:
            line = await proc.stdout.readline()
            if not line:
                return
            received.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        for attempt in range(60):
            await publish(attempt)
            done, _ = await asyncio.wait([reader], timeout=0.5)
            if done:
                break
    finally:
        reader.cancel()
    if len(received) < count:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"the listener printed {len(received)} of {count} lines: {err.decode()}")
    return received


async def _ended(proc, timeout: float = 60) -> str:
    """Wait for the listener to exit. :return: Its stderr"""
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return err.decode()


async def _listen_while_publishing(tmp_path, acct: pathlib.Path, publish) -> list:
    """
    Run ``evbus listen --count 2`` on the profile ``mine`` of ``acct`` and call
    ``publish(attempt)`` until the listener printed two lines; assert it exits 0.

    :return: The two lines, as data
    """
    async with _listening(tmp_path, acct, "--count", "2", "--timeout", "30") as proc:
        received = await _printed(proc, 2, publish)
        err = await _ended(proc)
    assert proc.returncode == 0, err
    return received


async def test_listen_on_a_nats_subject(tmp_path, nats_server):
    import nats

    from tests.brokers import unique

    subject = unique() + ".events"
    acct = tmp_path / "acct.yml"
    acct.write_text(f"nats:\n  mine:\n    subject: {subject}\n    connection:\n      servers: {nats_server}\n")
    client = await nats.connect(nats_server)
    try:
        async def publish(attempt: int):
            await client.publish(subject, json.dumps({"try": attempt}).encode())
            await client.flush()

        received = await _listen_while_publishing(tmp_path, acct, publish)
    finally:
        await client.close()
    assert all(r["routing_key"] == subject and "try" in r["body"] for r in received)


@pytest.mark.parametrize("mode", ["stream", "pubsub"])
async def test_listen_on_a_redis_stream_or_channel(tmp_path, redis_reader, redis_server, mode):
    key = redis_reader.key()
    acct = tmp_path / "acct.yml"
    acct.write_text(
        f"redis:\n  mine:\n    mode: {mode}\n    {'stream' if mode == 'stream' else 'channel'}: {key}\n"
        f"    connection:\n      url: {redis_server}\n"
    )

    async def publish(attempt: int):
        body = json.dumps({"try": attempt}).encode()
        if mode == "stream":
            await redis_reader.client.xadd(key, {"body": body, "id": str(attempt)})
        else:
            await redis_reader.client.publish(key, body)

    received = await _listen_while_publishing(tmp_path, acct, publish)
    assert all(r["routing_key"] == key and "try" in r["body"] for r in received)
    if mode == "stream":  # the entries in order, from the first one added after the listener started
        tries = [r["body"]["try"] for r in received]
        assert tries[1] == tries[0] + 1


async def test_listen_on_an_mqtt_topic(tmp_path, mqtt_broker):
    import aiomqtt

    from tests.brokers import unique

    topic = unique() + "/events"
    acct = tmp_path / "acct.yml"
    acct.write_text(
        f"mqtt:\n  mine:\n    topic: {topic}\n    qos: 1\n"
        f"    connection:\n      hostname: {mqtt_broker['hostname']}\n      port: {mqtt_broker['port']}\n"
    )
    async with aiomqtt.Client(**mqtt_broker) as client:
        async def publish(attempt: int):
            await client.publish(topic, json.dumps({"try": attempt}).encode(), qos=1)

        received = await _listen_while_publishing(tmp_path, acct, publish)
    assert all(r["routing_key"] == topic and "try" in r["body"] for r in received)


# evbus listen: every failure is one line on stderr and exit status 2; Ctrl-C is 130

BROKER_PORTS = {"pika": 5672, "kafka": None, "nats": 4222, "redis": 6379, "mqtt": 1883}
SERVICES = {"pika": "rabbitmq", "nats": "nats_server", "redis": "redis_server", "mqtt": "mqtt_broker"}


def _acct(tmp_path, plugin: str, key: str, port: int, password: str = "guest") -> pathlib.Path:
    """
    An acct file with the profile ``mine`` of ``plugin`` on 127.0.0.1:``port``,
    for ``key`` (its queue, topic, subject or stream).
    """
    profile = {
        "pika": {"connection": {"url": f"amqp://guest:{password}@127.0.0.1:{port}/"}, "routing_key": key},
        "kafka": {"topics": [key], "connection": {"bootstrap_servers": f"127.0.0.1:{port}"}},
        "nats": {"subject": key, "connection": {"servers": f"nats://127.0.0.1:{port}"}},
        "redis": {"stream": key, "connection": {"url": f"redis://127.0.0.1:{port}/0"}},
        "mqtt": {"topic": key, "connection": {"hostname": "127.0.0.1", "port": port}},
    }[plugin]
    acct = tmp_path / "acct.yml"
    acct.write_text(yaml.safe_dump({plugin: {"mine": profile}}))
    return acct


def _listen(tmp_path, acct: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return evbus("listen", "--acct-file", str(acct), "--profile", "mine", *args, cwd=tmp_path)


def _error_line(stderr: str) -> str:
    """The one line of a failed command: no traceback, nothing besides."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("evbus: "), stderr
    return lines[0]


def _assert_cannot_listen(line: str, plugin: str, port: int, reason: str):
    """The error names the plugin, the profile and the destination (127.0.0.1:port), then the reason."""
    source = rf"ingress\.{plugin} profile 'mine' \(\w+://127\.0\.0\.1:{port}\b[^)]*\)"
    assert re.match(rf"evbus: cannot listen on {source}: {reason}", line), line


@contextlib.asynccontextmanager
async def _publisher(plugin: str, key: str):
    """A client of the test's own on the machine's broker: yields ``publish(attempt)`` to ``key``."""

    def body(attempt: int) -> bytes:
        return json.dumps({"try": attempt}).encode()

    if plugin == "pika":
        import aio_pika

        connection = await aio_pika.connect(URL)
        channel = await connection.channel()
        await channel.declare_queue(key, durable=False)
        try:
            yield lambda attempt: channel.default_exchange.publish(aio_pika.Message(body(attempt)), key)
        finally:
            await channel.queue_delete(key)
            await connection.close()
    elif plugin == "nats":
        import nats

        client = await nats.connect(NATS_URL)
        try:
            yield lambda attempt: client.publish(key, body(attempt))
        finally:
            await client.close()
    elif plugin == "redis":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            yield lambda attempt: client.xadd(key, {"body": body(attempt)})
        finally:
            await client.delete(key)
            await client.aclose()
    else:
        import aiomqtt

        async with aiomqtt.Client(MQTT_HOST, MQTT_PORT) as client:
            yield lambda attempt: client.publish(key, body(attempt), qos=1)


async def _put(amqp, queue: str, *bodies: dict):
    import aio_pika

    for body in bodies:
        await amqp.channel.default_exchange.publish(aio_pika.Message(json.dumps(body).encode()), queue)


def test_listen_on_a_queue_that_does_not_exist(tmp_path, rabbitmq):
    queue = unique()
    out = _listen(tmp_path, _acct(tmp_path, "pika", queue, 5672))
    assert out.returncode == 2
    assert _error_line(out.stderr) == (
        f"evbus: cannot listen on ingress.pika profile 'mine' (amqp://127.0.0.1:5672/): "
        f"queue '{queue}' does not exist"
    )


async def test_listen_with_a_wrong_password(tmp_path, amqp):
    out = _listen(tmp_path, _acct(tmp_path, "pika", await amqp.queue(), 5672, password="wr0ng-s3cret"))
    assert out.returncode == 2
    _assert_cannot_listen(_error_line(out.stderr), "pika", 5672, "cannot connect: .*ACCESS_REFUSED")
    assert "wr0ng-s3cret" not in out.stdout + out.stderr


@pytest.mark.parametrize("plugin", list(BROKER_PORTS))
def test_listen_on_a_dead_port(tmp_path, plugin):
    port = _free_port()
    out = _listen(tmp_path, _acct(tmp_path, plugin, unique(), port), "--timeout", "30")
    assert out.returncode == 2, out.stderr
    _assert_cannot_listen(_error_line(out.stderr), plugin, port, "cannot connect: ")


async def test_listen_count_takes_and_acknowledges_exactly_that_many(tmp_path, amqp):
    """Three messages in a queue, --count 2: two printed and acknowledged, the third ready in the queue."""
    queue = await amqp.queue(auto_delete=False)
    await _put(amqp, queue, {"n": 0}, {"n": 1}, {"n": 2})
    acct = _acct(tmp_path, "pika", queue, 5672)
    out = await asyncio.get_running_loop().run_in_executor(None, _listen, tmp_path, acct, "--count", "2")
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [{"routing_key": queue, "body": {"n": n}} for n in range(2)]
    assert await amqp.ready(queue) == 1
    assert [json.loads(m.body) for m in await amqp.take(queue, 1)] == [{"n": 2}]


async def test_listen_into_a_reader_that_went_away_leaves_the_message_in_the_queue(tmp_path, amqp):
    """The output is gone before the first message is printed: it is not acknowledged, and stays in the queue."""
    queue = await amqp.queue(auto_delete=False)
    await _put(amqp, queue, {"n": 0}, {"n": 1}, {"n": 2})
    acct = _acct(tmp_path, "pika", queue, 5672)
    proc = subprocess.Popen(
        [str(EVBUS), "listen", "--acct-file", str(acct), "--profile", "mine", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=_env(),
    )
    proc.stdout.close()  # (| head that ended before the first line)
    try:
        err = await asyncio.get_running_loop().run_in_executor(None, lambda: proc.communicate(timeout=60)[1])
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert_clean(err.decode())
    assert await amqp.ready(queue) == 3
    assert [json.loads(m.body) for m in await amqp.take(queue, 3)] == [{"n": n} for n in range(3)]


async def test_listen_ends_on_ctrl_c_with_its_summary(tmp_path, amqp):
    queue = await amqp.queue(auto_delete=False)
    await _put(amqp, queue, {"n": 0})

    async def nothing(attempt: int):
        pass

    async with _listening(tmp_path, _acct(tmp_path, "pika", queue, 5672), "--timeout", "60") as proc:
        assert await _printed(proc, 1, nothing) == [{"routing_key": queue, "body": {"n": 0}}]
        proc.send_signal(signal.SIGINT)
        err = await _ended(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "evbus: 1 message(s) from ingress.pika profile 'mine'"
    assert await amqp.ready(queue) == 0  # the one taken was acknowledged


@pytest.mark.parametrize("plugin", ["pika", "nats", "redis", "mqtt"])
async def test_listen_loses_its_connection(tmp_path, request, proxy, plugin):
    """The listener's connection breaks off (through a proxy that the test cuts): one line, exit 2."""
    request.getfixturevalue(SERVICES[plugin])
    key = unique() + (".events" if plugin == "nats" else "")
    cut = await proxy(BROKER_PORTS[plugin])
    async with _publisher(plugin, key) as publish:
        async with _listening(tmp_path, _acct(tmp_path, plugin, key, cut.port), "--timeout", "60") as proc:
            await _printed(proc, 1, publish)
            await cut.cut()
            err = await _ended(proc)
    assert proc.returncode == 2, err
    _assert_cannot_listen(_error_line(err), plugin, cut.port, "lost the connection")


async def test_listen_loses_its_kafka_broker(tmp_path, tansu):
    """A Kafka broker of the test's own dies while the listener reads: one line, exit 2."""
    import aiokafka

    broker = Tansu(tansu.binary)
    broker.start()
    try:
        topic = unique()
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            acct = _acct(tmp_path, "kafka", topic, broker.port)
            async with _listening(tmp_path, acct, "--timeout", "60") as proc:
                await _printed(proc, 1, lambda attempt: producer.send_and_wait(topic, b"%d" % attempt))
                broker.kill()
                err = await _ended(proc)
        finally:
            await producer.stop()
    finally:
        broker.kill()
    assert proc.returncode == 2, err
    _assert_cannot_listen(_error_line(err), "kafka", broker.port, "lost the connection")


def test_an_error_is_one_line_when_its_text_is_not(tmp_path):
    acct = tmp_path / "acct.yml"
    acct.write_text("internal:\n  default: {}\n")
    out = evbus("listen", "--acct-file", str(acct), "--profile", "two\nlines", cwd=tmp_path)
    assert out.returncode == 2
    assert _error_line(out.stderr) == "evbus: no acct profile named 'two lines' (the profiles: default)"


def test_an_acct_file_without_internal_gets_no_hidden_lane(tmp_path, redis_server):
    """With an acct file, only its profiles get events: one that matches none is exit 1, not a silent print."""
    acct = tmp_path / "acct.yml"
    acct.write_text(f"redis:\n  prod:\n    connection:\n      url: {REDIS_URL}\n    stream: {unique()}\n")
    out = evbus("publish", "--acct-file", str(acct), "--profile", "prdo", '{"x": 1}', cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert lines(out.stdout) == []
    assert "1 event(s) of profile 'prdo' matched no acct profile" in out.stderr
    assert "on 1 lane(s)" in out.stderr


def test_dead_letters_that_cannot_be_written_are_said_lost(tmp_path):
    acct = tmp_path / "acct.yml"
    acct.write_text(f"pika:\n  default:\n    connection:\n      url: amqp://guest:guest@127.0.0.1:{_free_port()}/\n")
    out = evbus(
        "publish", "--acct-file", str(acct), '{"q": 1}',
        env={"EVBUS_DEAD_LETTER_FILE": "/proc/evbus-no-such-dir/dead.jsonl", "EVBUS_RETRY_SECONDS": "0.2"},
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert "1 dead letter(s) could not be written to /proc/evbus-no-such-dir/dead.jsonl" in out.stderr
    assert "those events are lost" in out.stderr


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path):
    config = tmp_path / "evbus.yml"
    config.write_text("evbus: [unclosed\n")
    out = evbus("--config", str(config), "publish", '{"x": 1}', cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("evbus: cannot load the configuration:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_plain_text_acct_file_is_read_without_a_warning(tmp_path):
    acct = tmp_path / "acct.yml"
    acct.write_text(yaml.safe_dump({"internal": {"mine": {}}}))
    out = evbus("publish", "--acct-file", str(acct), "--profile", "mine", '{"n": 1}', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout) == [{"routing_key": None, "body": {"n": 1}}]
    assert "acct_key" not in out.stderr, out.stderr


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "there is no such file"),
        ("internal: [unclosed\n", "acct.yml"),
        ("gAAAAABm" + "x" * 40 + "\n", "it is encrypted, and needs its key (--acct-key or ACCT_KEY)"),
        ("- internal\n", "its top level is a list, not a mapping of provider -> profiles"),
    ],
    ids=["missing", "not-yaml", "encrypted", "a-list"],
)
def test_an_acct_file_that_cannot_be_read_is_one_line(tmp_path, content, expected):
    acct = tmp_path / "acct.yml"
    if content is not None:
        acct.write_text(content)
    out = evbus("publish", "--acct-file", str(acct), '{"n": 1}', cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    line = _error_line(out.stderr)
    assert line.startswith(f"evbus: Cannot read the acct file '{acct}'") and expected in line, line
    if content is None or not content.startswith("gA"):
        assert "encrypted" not in line, line


def test_listen_count_below_0_is_an_error(tmp_path):
    out = evbus("listen", "--profile", "quiet", "--count", "-1", "--timeout", "0.5", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "--count must be 0 (no limit) or more, not -1" in out.stderr


def test_listen_count_that_does_not_come_is_exit_1(tmp_path):
    """--count 2 on an internal profile that gets nothing: the summary says what came, exit status 1."""
    out = evbus("listen", "--profile", "quiet", "--count", "2", "--timeout", "0.5", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    assert "evbus: 2 message(s) asked for, 0 came (none for 0.5 s: --timeout)" in out.stderr, out.stderr


@pytest.mark.parametrize("count", [["--count", "1"], []], ids=["count", "no-count"])
@pytest.mark.parametrize("plugin", ["pika", "redis", "mqtt"])
def test_listen_on_a_server_that_never_answers_says_it_cannot_connect(tmp_path, plugin, count):
    """
    A server that takes the connection and never answers (what a real broker
    cannot be made to do): nothing came within --timeout, and the connection
    tried on its own is not made either, so the command says it cannot
    connect (exit 2), not that no message came.
    """
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel accepts the connections; nobody answers them
    port = server.getsockname()[1]
    try:
        out = _listen(tmp_path, _acct(tmp_path, plugin, unique(), port), *count, "--timeout", "1")
    finally:
        server.close()
    assert out.returncode == 2, out.stderr
    _assert_cannot_listen(_error_line(out.stderr), plugin, port, "cannot connect: no answer within 1 s")


@pytest.mark.parametrize("plugin", ["kafka", "nats", "redis", "mqtt"])
def test_a_connection_option_the_client_does_not_take_fails_at_once(tmp_path, request, plugin):
    """A typo in a profile's connection options is no broker that is down: one attempt, naming the option, exit 1."""
    port = request.getfixturevalue("tansu").port if plugin == "kafka" else BROKER_PORTS[plugin]
    if plugin != "kafka":
        request.getfixturevalue(SERVICES[plugin])
    acct = _acct(tmp_path, plugin, unique(), port)
    profiles = yaml.safe_load(acct.read_text())
    profiles[plugin]["mine"]["connection"]["bogus_opt"] = 1
    acct.write_text(yaml.safe_dump(profiles))
    dead = tmp_path / "dead.jsonl"
    out = evbus(
        "publish", "--acct-file", str(acct), "--profile", "mine", '{"x": 1}',
        env={"EVBUS_DEAD_LETTER_FILE": str(dead)}, cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert "a retry cannot help" in out.stderr
    assert "after 1 attempt(s)" in out.stderr and "'bogus_opt'" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(dead.read_text().splitlines()) == 1
