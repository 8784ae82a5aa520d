"""An app's error callback handler, as error_callback_ref names it: my_app.errors.handle."""


def __init__(hub):
    hub.my_app.errors.RECEIVED = []


async def handle(hub, error_data: dict):
    hub.my_app.errors.RECEIVED.append(error_data)
