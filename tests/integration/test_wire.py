"""
What each destination receives, read back by a consumer of the test's own:
CloudEvents in binary and structured mode, decoded with the cloudevents SDK.
"""
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from evbus.exc import ProfileError

pytestmark = pytest.mark.integration


async def test_binary_mode_where_messages_carry_no_headers_is_refused_at_start(hub):
    profile = {"routing_key": "q", "envelope": "cloudevents"}
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"p": profile}})
    with pytest.raises(ProfileError, match="messages of ingress.internal with this profile carry none"):
        await hub.evbus.init.start(contexts)


async def test_structured_mode_on_the_internal_queue(hub, running):
    await running({"internal": {"default": {"routing_key": "q", "envelope": "cloudevents",
                                            "cloudevents": {"mode": "structured"}}}})
    await hub.evbus.broker.put(body=[1, 2])
    queue = await hub.ingress.internal.get("q")
    decoded = JSONFormat().read(CloudEvent, await queue.get())
    assert decoded.get_data() == [1, 2] and decoded.get_type() == "evbus.default"
