"""The broker plugin interface: declared as pop contracts, checked when a plugin loads."""
import pop.exc
import pytest

from evbus.exc import IngressPluginError
from tests.conftest import add_ingress

BROKERS = ["kafka", "pika", "nats", "redis", "mqtt"]


@pytest.mark.parametrize("name", BROKERS)
def test_broker_plugins_name_the_broker_contract(hub, name):
    assert "broker" in hub.evbus.adapt.contracts(name)
    destination = hub.evbus.adapt.destination(name)
    assert destination.pipelined and destination.open is not None and destination.close is not None


def test_send_many_is_declared_by_the_batches_contract(hub):
    assert hub.evbus.adapt.contracts("kafka") == ["broker", "batches"]
    assert hub.evbus.adapt.destination("kafka").send_many is not None
    assert hub.evbus.adapt.destination("pika").send_many is None


def test_one_registry_name_for_every_broker_plugin(hub):
    for name in BROKERS:
        assert hub.ingress[name].CONNECTIONS == {} and len(hub.ingress[name].BY_CTX) == 0


def test_a_broker_plugin_with_a_wrong_send_fails_at_load_naming_plugin_and_function(hub):
    add_ingress(hub, "badsend")
    with pytest.raises(pop.exc.ContractSigException) as raised:
        hub.ingress.badsend.send
    text = str(raised.value)
    # pop names the file and the function (newer releases name the contract's sig_send too)
    assert "badsend.py" in text and "send: Parameter \"evnt\" does not have the correct name: event" in text


def test_a_plugin_without_the_contract_and_a_wrong_send_is_an_error_not_a_fallback(hub):
    add_ingress(hub, "misspelt")
    with pytest.raises(IngressPluginError, match=r"ingress\.misspelt\.send takes \(ctx, routing_key, evnt\)"):
        hub.evbus.adapt.destination("misspelt")
