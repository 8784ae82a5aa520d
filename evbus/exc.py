"""
The exceptions evbus raises, under one root: :class:`EvbusError`.

Each subclass also inherits the builtin that fits it, so callers that catch
``ValueError``, ``TypeError`` or ``TimeoutError`` keep working.
"""
import asyncio
import queue


class EvbusError(Exception):
    """The root of every error evbus raises."""


class NotRetriableError(EvbusError):
    """
    An error that a retry cannot change: a lane gives its event up after one
    attempt. Retriability is declared by class: ``retriable`` is False here
    and in every subclass (a broker plugin's ``retriable(error)`` decides for
    the exceptions of its client library).
    """

    retriable = False


class ConfigError(NotRetriableError, ValueError):
    """An option, plugin name or profile that evbus cannot use; a retry cannot change it."""


class ProfileError(ConfigError):
    """A malformed acct profile, named by provider and profile."""

    def __init__(self, provider: str, profile: str | None, reason: str):
        self.provider = provider
        self.profile = profile
        where = f"provider '{provider}'" + (f", profile '{profile}'" if profile is not None else "")
        super().__init__(f"Malformed acct profile ({where}): {reason}")


class TlsConfigError(ConfigError):
    """
    A profile's ``tls`` block that evbus cannot make a TLS connection of: an
    unknown option, a file missing or unreadable, a key its password does not
    open. A retry cannot change it.
    """


class IngressPluginError(ConfigError):
    """An ingress plugin that evbus cannot deliver to."""


class SerializeError(EvbusError, TypeError):
    """An event body the configured serializer cannot encode."""

    def __init__(self, plugin: str, body_type: str, reason: str):
        self.plugin = plugin
        self.body_type = body_type
        super().__init__(
            f"The '{plugin}' serializer cannot encode a body of type {body_type}: {reason}"
        )


class BusClosedError(EvbusError, RuntimeError):
    """An event put after stop() and before the bus was started again."""


class BusFullError(EvbusError, asyncio.QueueFull, queue.Full):
    """``put_nowait`` on a full bounded broker queue (config ``queue_size``); nothing was queued."""


class LaneFullError(EvbusError):
    """An event dropped from a full lane (config ``lane_size`` with ``lane_full: dead-letter``)."""


class BusRunningError(EvbusError, RuntimeError):
    """start() called while a listener already runs."""


class BusStoppedError(EvbusError, RuntimeError):
    """The listener ended (it was cancelled) before the stop that waited for it was done."""


class RefusedError(NotRetriableError):
    """
    A publish the broker refused for a reason that a retry cannot change; the
    text says what to fix. A lane gives such an event up after one attempt.
    """


class LoginRefusedError(RefusedError, PermissionError):
    """The broker refused the profile's login, or the permission to publish."""


class TlsRefusedError(RefusedError, ConnectionError):
    """
    A TLS connection that a retry cannot mend: the server's certificate was
    not trusted or is not for the host name, or the server refused the
    client's certificate (or its absence).
    """


class MessageTooLargeError(RefusedError, ValueError):
    """A message larger than the broker takes."""


class NackedError(EvbusError, ConnectionError):
    """
    A message the broker did not accept (RabbitMQ's basic.nack, a failure
    reason code of MQTT 5) for a reason that a retry may heal.
    """


class NoDestinationError(NotRetriableError, ValueError):
    """
    An event with no destination name (topic, subject, stream or channel):
    the profile names none and the event has no routing key.
    """


class ConnectError(EvbusError, ConnectionError):
    """No server of a profile could be reached; the text names them."""


class PublishError(EvbusError):
    """A publish that failed; its text has every known secret masked."""

    def __init__(self, message: str, error_type: str):
        self.error_type = error_type
        super().__init__(message)


class ListenError(EvbusError, ConnectionError):
    """
    A destination that ``evbus listen`` cannot listen on: not reached,
    refused, missing (a queue), or lost while listening. An ingress plugin's
    ``listen`` says what went wrong; the command line adds which destination.
    """


class EvbusTimeoutError(EvbusError, TimeoutError):
    """A wait that ran out of time."""


class DistributionConflictError(EvbusError, RuntimeError):
    """
    A distribution installed beside evbus that collides with it (pop-evbus,
    evbus-kafka, evbus-pika), or files of evbus that another replaced; the
    text names what to uninstall and how to restore evbus.
    """


class SpoolError(EvbusError, OSError):
    """The durable spool could not write or sync an event."""
