"""
The CloudEvents envelope of a profile, checked with the cloudevents SDK's
converters: the attributes, each protocol binding's header names and values,
the JSON event format, and the profile options it refuses.
"""
import datetime

import msgpack
import pytest
from cloudevents.core.bindings import amqp
from cloudevents.core.bindings import http
from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from evbus import cloudevents
from evbus.exc import ProfileError
from evbus.types import Event


def make(body: bytes = b'{"n": 1}', content_type: str = "application/json", profile: str = "orders") -> Event:
    return Event(profile=profile, routing_key="rk", body=body, content_type=content_type, timestamp=1714564800.25)


def envelope(options: dict | None = None, binding: cloudevents.Binding | None = cloudevents.KAFKA):
    acct = {"envelope": "cloudevents", **({"cloudevents": options} if options is not None else {})}
    return cloudevents.envelope(acct, lambda: binding, "kafka", "kafka", "p")


def test_rfc3339_is_utc_with_microseconds():
    assert cloudevents.rfc3339(1714564800.25) == "2024-05-01T12:00:00.250000Z"


def test_default_attributes_say_evbus_and_the_event_profile():
    event = make()
    attributes = envelope().attributes(event)
    assert attributes == {
        "specversion": "1.0",
        "id": event.id,
        "source": "evbus",
        "type": "evbus.orders",
        "time": "2024-05-01T12:00:00.250000Z",
        "datacontenttype": "application/json",
    }


def test_source_and_type_from_the_profile_with_the_event_profile_in_them():
    attributes = envelope({"source": "/shop/{profile}", "type": "com.example.{profile}.v1"}).attributes(make())
    assert (attributes["source"], attributes["type"]) == ("/shop/orders", "com.example.orders.v1")


def test_kafka_binary_decodes_with_the_sdk():
    event = make()
    wire = envelope({"mode": "binary"})(event)
    assert wire.body == event.body and wire.content_type == "application/json"
    names = [name for name, _ in wire.headers]
    assert names == ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"]  # content type: content-type
    headers = {name: value.encode() for name, value in wire.headers}
    headers["content-type"] = wire.content_type.encode()
    decoded = kafka.from_binary_event(kafka.KafkaMessage(headers=headers, key=None, value=wire.body))
    assert decoded.get_id() == event.id and decoded.get_type() == "evbus.orders"
    assert decoded.get_time() == datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    assert decoded.get_datacontenttype() == "application/json"
    assert decoded.get_data() == {"n": 1}


def test_amqp_binary_uses_the_underscore_prefix_and_decodes_with_the_sdk():
    event = make()
    wire = envelope(binding=cloudevents.AMQP)(event)
    headers = dict(wire.headers)
    assert set(headers) == {f"cloudEvents_{n}" for n in ("specversion", "id", "source", "type", "time")}
    decoded = amqp.from_amqp_event(
        amqp.AMQPMessage(
            properties={"content-type": wire.content_type}, application_properties=headers,
            application_data=wire.body,
        )
    )
    assert (decoded.get_id(), decoded.get_source(), decoded.get_data()) == (event.id, "evbus", {"n": 1})


def test_nats_binary_percent_encodes_and_decodes_with_the_http_rules():
    """The NATS binding names (ce-) and encodes header values as the HTTP binding does."""
    event = make()
    wire = envelope({"source": 'my app/"é"%'}, binding=cloudevents.NATS)(event)
    headers = dict(wire.headers)
    assert headers["ce-source"] == "my%20app/%22%C3%A9%22%25"
    assert headers["ce-datacontenttype"] == "application/json"
    headers["Content-Type"] = wire.content_type
    decoded = http.from_http_event(http.HTTPMessage(headers=headers, body=wire.body))
    assert decoded.get_source() == 'my app/"é"%' and decoded.get_id() == event.id


def test_mqtt_binary_names_are_the_attribute_names():
    wire = envelope(binding=cloudevents.MQTT)(make())
    assert [name for name, _ in wire.headers] == ["specversion", "id", "source", "type", "time", "datacontenttype"]


def test_binary_keeps_headers_already_on_the_event():
    event = Event(body=b"1", headers=(("traceparent", "00-1-2-01"),))
    wire = envelope()(event)
    assert wire.headers[0] == ("traceparent", "00-1-2-01") and len(wire.headers) == 6


def test_structured_json_body_is_the_event_format_with_the_body_as_data():
    event = make()
    wire = envelope({"mode": "structured"}, binding=None)(event)
    assert wire.content_type == "application/cloudevents+json" and wire.headers == ()
    decoded = JSONFormat().read(CloudEvent, wire.body)
    assert decoded.get_id() == event.id and decoded.get_type() == "evbus.orders"
    assert decoded.get_datacontenttype() == "application/json" and decoded.get_data() == {"n": 1}
    # the body is spliced in as it is, not parsed and encoded again
    assert wire.body.endswith(b',"data":{"n": 1}}')


def test_structured_msgpack_body_is_data_base64():
    body = msgpack.packb({"n": [1, 2]})
    wire = envelope({"mode": "structured"}, binding=None)(make(body, "application/msgpack"))
    decoded = JSONFormat().read(CloudEvent, wire.body)
    assert decoded.get_datacontenttype() == "application/msgpack"
    assert decoded.get_data() == body


@pytest.mark.parametrize(
    "content_type,expected",
    [("application/json", True), ("application/cloudevents+json", True), ("text/json; charset=utf-8", True),
     ("application/msgpack", False), ("text/plain", False)],
)
def test_is_json(content_type, expected):
    assert cloudevents.is_json(content_type) is expected


def test_no_envelope_by_default_and_with_none():
    for acct in ({}, {"envelope": None}, {"envelope": "none"}, {"envelope": "NONE"}):
        assert cloudevents.envelope(acct, lambda: cloudevents.KAFKA, "kafka", "kafka", "p") is None


@pytest.mark.parametrize(
    "acct,reason",
    [
        ({"envelope": "soap"}, "envelope 'soap' is neither none nor cloudevents"),
        ({"envelope": "cloudevents", "cloudevents": {"mode": "batch"}}, "mode 'batch' is neither binary nor structured"),
        ({"envelope": "cloudevents", "cloudevents": {"subject": "x"}}, "unknown cloudevents option(s) subject"),
        ({"envelope": "cloudevents", "cloudevents": "binary"}, "cloudevents must be a mapping"),
        ({"cloudevents": {"mode": "binary"}}, "cloudevents options without 'envelope: cloudevents'"),
    ],
)
def test_options_evbus_cannot_use_are_profile_errors(acct, reason):
    with pytest.raises(ProfileError, match="provider 'kafka', profile 'p'") as raised:
        cloudevents.envelope(acct, lambda: cloudevents.KAFKA, "kafka", "kafka", "p")
    assert reason in str(raised.value)


def test_binary_where_messages_carry_no_headers_is_a_profile_error_structured_is_not():
    with pytest.raises(ProfileError, match="messages of ingress.internal with this profile carry none"):
        cloudevents.envelope({"envelope": "cloudevents"}, lambda: None, "internal", "internal", "p")
    structured = {"envelope": "cloudevents", "cloudevents": {"mode": "structured"}}
    assert cloudevents.envelope(structured, lambda: None, "internal", "internal", "p").mode == "structured"


def test_binary_tells_the_mode_of_a_profile():
    assert cloudevents.binary({"envelope": "cloudevents"})
    assert cloudevents.binary({"envelope": "cloudevents", "cloudevents": {"mode": "binary"}})
    assert not cloudevents.binary({"envelope": "cloudevents", "cloudevents": {"mode": "structured"}})
    assert not cloudevents.binary({})
