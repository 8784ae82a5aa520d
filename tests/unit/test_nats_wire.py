"""
The NATS ingress's messages as bytes: the HPUB command evbus puts in nats-py's
write buffer is the one nats-py's own ``Client.publish`` puts there for the
same headers as a dict. No server: both write into a client whose buffer is
captured.
"""
import pytest

from evbus.types import Event

nats_client = pytest.importorskip("nats.aio.client")
nats_errors = pytest.importorskip("nats.errors")

from evbus.ingress import nats as ingress  # noqa: E402  (after the importorskip of its library)

TRACE = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("tracestate", "k=v"))
CLOUDEVENT = (("ce-specversion", "1.0"), ("ce-id", "x-1"), ("ce-source", "%2Fshop%2F%C3%BC%20orders"))

EVENTS = {
    "plain": Event(profile="p", routing_key="s", body=b'{"n": 1}'),
    "msgpack": Event(profile="p", routing_key="s", body=b"\x81\xa1n\x01", content_type="application/msgpack"),
    "trace and cloudevent": Event(profile="p", routing_key="s", body=b"{}", headers=TRACE + CLOUDEVENT),
    "restored id": Event(profile="p", body=b"1", id=" an id\r\nInjected: yes ", timestamp=1700000000.5),
    "empty body": Event(profile="p", body=b""),
}
# nats-py 2.16 writes a CR or LF of a header value as a space (evbus does too); before, as it is
NATS_PY_KEEPS_VALUES_ON_THEIR_LINE = hasattr(nats_client, "_HEADER_VALUE_NEWLINES")
ROUTES = {"core": (False, None), "jetstream": (True, None), "jetstream with stream": (True, "EVENTS")}


class Captured:
    """A nats-py client, not connected, whose write buffer is a list and whose limits are the defaults'."""

    def __init__(self):
        client = nats_client.Client()
        client._status = nats_client.Client.CONNECTED
        client._max_payload = 1024 * 1024
        client._max_pending_size = nats_client.DEFAULT_PENDING_SIZE
        client._flush_queue = None  # no flusher: the commands stay in the buffer
        self.commands: list[bytes] = []

        async def send_command(command: bytes, priority: bool = False):
            self.commands.append(command)

        client._send_command = send_command
        self.client = client


async def as_nats_py_writes_it(subject: str, reply: str, headers: dict, body: bytes) -> bytes:
    captured = Captured()
    await captured.client.publish(subject, body, reply=reply, headers=dict(headers))
    [command] = captured.commands
    return command


async def as_evbus_writes_it(subject: str, reply: str, route: "ingress.Headers", event: Event) -> bytes:
    captured = Captured()
    session = ingress.Session()
    session.attach(captured.client)
    await session.write(subject, reply, route, event)
    [command] = captured.commands
    return command


@pytest.mark.parametrize("route", ROUTES, ids=list(ROUTES))
@pytest.mark.parametrize("event", EVENTS, ids=list(EVENTS))
async def test_the_command_is_nats_py_s_for_the_same_headers(route, event):
    jetstream, stream = ROUTES[route]
    headers = ingress.Headers(jetstream, stream)
    event = EVENTS[event]
    reply = "_INBOX.abc.7" if jetstream else ""
    mapping = headers.mapping(event)
    if jetstream:
        # what nats-py's JetStream publish adds to the headers it is given
        assert mapping["Nats-Msg-Id"] == event.id
        assert ("Nats-Expected-Stream" in mapping) == bool(stream)
    given = mapping
    if not NATS_PY_KEEPS_VALUES_ON_THEIR_LINE:
        # This nats-py lets a line feed in a value end its line; evbus writes a space, as
        # later ones do: compared with what this one writes of the values evbus sends
        given = {key: value.replace("\r", " ").replace("\n", " ") for key, value in mapping.items()}
    expected = await as_nats_py_writes_it("events.x", reply, given, event.body)
    assert await as_evbus_writes_it("events.x", reply, headers, event) == expected
    # and again, from the parts built on the first call
    assert await as_evbus_writes_it("events.x", reply, headers, event) == expected
    assert headers.block(event) == ingress._header_block(mapping)


def test_the_header_order_is_evbus_s_then_the_event_s_then_jetstream_s():
    event = EVENTS["trace and cloudevent"]
    names = list(ingress.Headers(True, "EVENTS").mapping(event))
    assert names == [
        "Evbus-Id",
        "Evbus-Timestamp",
        "Content-Type",
        *(name for name, _ in TRACE + CLOUDEVENT),
        "Nats-Msg-Id",
        "Nats-Expected-Stream",
    ]


def test_a_value_cannot_end_its_line():
    block = ingress.Headers(False, None).block(EVENTS["restored id"])
    assert b"Evbus-Id: an id  Injected: yes\r\n" in block
    assert block.count(b"\r\n") == 5  # NATS/1.0, three headers, the empty line


def test_a_header_key_that_is_no_token_is_refused_as_nats_py_refuses_it():
    event = Event(profile="p", body=b"1", headers=(("bad key", "v"),))
    with pytest.raises(nats_errors.Error) as raised:
        ingress.Headers(False, None).block(event)
    expected = getattr(nats_errors, "BadHeaderError", nats_errors.Error)
    assert isinstance(raised.value, expected)


async def test_a_subject_that_could_end_the_line_is_refused():
    session = ingress.Session()
    session.attach(Captured().client)
    for subject in ("a b", "a\r\nPUB x 1", "a\tb"):
        with pytest.raises(nats_errors.BadSubjectError):
            await session.write(subject, "", ingress.Headers(False, None), EVENTS["plain"])


async def test_a_body_over_max_payload_is_refused_before_anything_is_written():
    captured = Captured()
    captured.client._max_payload = 4
    session = ingress.Session()
    session.attach(captured.client)
    with pytest.raises(nats_errors.MaxPayloadError):
        await session.write("s", "", ingress.Headers(False, None), EVENTS["plain"])
    assert captured.commands == []


async def test_without_nats_py_s_write_buffer_the_headers_go_through_client_publish(monkeypatch):
    monkeypatch.setattr(ingress, "_BUFFER", ("_no_such_buffer",))
    captured = Captured()
    session = ingress.Session()
    session.attach(captured.client)
    headers = ingress.Headers(True, None)
    event = EVENTS["plain"]
    await session.write("events.x", "_INBOX.abc.1", headers, event)
    assert captured.commands == [
        await as_nats_py_writes_it("events.x", "_INBOX.abc.1", headers.mapping(event), event.body)
    ]
