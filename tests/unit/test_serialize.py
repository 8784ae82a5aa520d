"""The json, msgpack and str serializers, and errors for bodies they cannot encode."""
import json
import math

import msgpack
import pytest

from evbus.exc import EvbusError
from evbus.exc import SerializeError


class Thing:
    def __repr__(self):
        return "<Thing>"


def test_json_lenient_conversions(hub):
    body = {
        "set": {3, 1, 2},
        "tuple": (1, 2),
        "gen": (i for i in range(3)),
        "obj": Thing(),
        "bytes": b"raw",
        "mixed_set": {1, "a"},
    }
    out = json.loads(hub.serialize.json.apply(body))
    assert out["set"] == [1, 2, 3]
    assert out["tuple"] == [1, 2]
    assert out["gen"] == [0, 1, 2]
    assert out["obj"] == "<Thing>"
    assert out["bytes"] == "raw"
    assert sorted(map(str, out["mixed_set"])) == ["1", "a"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_never_emits_invalid_json(hub, value):
    raw = hub.serialize.json.apply({"x": value, "nested": [value, {value}]})
    assert b"NaN" not in raw and b"Infinity" not in raw
    assert json.loads(raw) == {"x": None, "nested": [None, [None]]}


def test_json_matches_upstream_bytes(hub):
    assert hub.serialize.json.apply({"message": "event content"}) == b'{"message": "event content"}'


def test_msgpack_roundtrip(hub):
    body = {"a": [1, 2.5, None, True], "b": b"\x00\x01", "c": "ü"}
    assert msgpack.unpackb(hub.serialize.msgpack.apply(body), raw=False) == body


async def test_msgpack_refuses_unknown_type_at_put(hub):
    hub.serialize.PLUGIN = "msgpack"
    with pytest.raises(SerializeError) as info:
        await hub.evbus.broker.put(body={"x": Thing()})
    assert "msgpack" in str(info.value) and "dict" in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, EvbusError)
    assert hub.evbus.BUS.qsize() == 0


@pytest.mark.parametrize("plugin", ["json", "msgpack"])
def test_circular_reference_is_a_serialize_error(hub, plugin):
    hub.evbus.SERIAL_PLUGIN = plugin
    body = {"a": 1}
    body["self"] = body
    with pytest.raises(SerializeError) as info:
        hub.evbus.broker.put_nowait(body=body)
    assert plugin in str(info.value)
    assert hub.evbus.BUS.qsize() == 0
    # The bus keeps working
    hub.evbus.broker.put_nowait(body={"ok": True})
    assert hub.evbus.BUS.qsize() == 1


def test_serial_plugin_and_serialize_plugin_stay_in_step(hub):
    hub.evbus.SERIAL_PLUGIN = "msgpack"
    hub.evbus.broker.put_nowait(body={"n": 1})
    assert hub.serialize.PLUGIN == "msgpack"
    hub.serialize.PLUGIN = "json"
    hub.evbus.broker.put_nowait(body={"n": 2})
    assert hub.evbus.SERIAL_PLUGIN == "json"
    first, second = hub.evbus.BUS.get_nowait(), hub.evbus.BUS.get_nowait()
    assert msgpack.unpackb(first.body) == {"n": 1}
    assert first.content_type == "application/msgpack"
    assert json.loads(second.body) == {"n": 2}
    assert second.content_type == "application/json"


def test_serial_plugin_none_falls_back(hub):
    """idem assigns hub.OPT.evbus.serial_plugin, which is None unless set."""
    hub.serialize.PLUGIN = "msgpack"
    hub.evbus.SERIAL_PLUGIN = None
    hub.evbus.broker.put_nowait(body=[1])
    assert msgpack.unpackb(hub.evbus.BUS.get_nowait().body) == [1]


def test_unknown_serializer_is_a_config_error(hub):
    from evbus.exc import ConfigError

    hub.evbus.SERIAL_PLUGIN = "yaml"
    with pytest.raises(ConfigError) as info:
        hub.evbus.broker.put_nowait(body={})
    assert "yaml" in str(info.value) and "json" in str(info.value) and "msgpack" in str(info.value)
    hub.evbus.SERIAL_PLUGIN = "json"
    hub.evbus.broker.put_nowait(body={})
    assert hub.evbus.BUS.qsize() == 1


def test_str_sends_the_body_as_text(hub):
    """pop-serial's str, which idem offers for --serialize-plugin: str(body), UTF-8."""
    hub.evbus.SERIAL_PLUGIN = "str"
    hub.evbus.broker.put_nowait(body={"a": "ü", "n": 1})
    hub.evbus.broker.put_nowait(body=Thing())
    first, second = hub.evbus.BUS.get_nowait(), hub.evbus.BUS.get_nowait()
    assert first.body == "{'a': 'ü', 'n': 1}".encode()
    assert first.content_type == "text/plain; charset=utf-8"
    assert second.body == b"<Thing>"
