"""An app's error callback handlers, as error_callback_ref names them: my_app.errors.handle (and two that never return)."""
import asyncio


def __init__(hub):
    hub.my_app.errors.RECEIVED = []


async def handle(hub, error_data: dict):
    hub.my_app.errors.RECEIVED.append(error_data)


async def stuck(hub, error_data: dict):
    """A handler that never returns (it waits on something that never comes)."""
    hub.my_app.errors.RECEIVED.append(error_data)
    await asyncio.Event().wait()


async def deaf(hub, error_data: dict):
    """A handler that swallows the cancel it gets, then takes half a second more."""
    hub.my_app.errors.RECEIVED.append(error_data)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.5)
