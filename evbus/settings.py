"""
The bus's settings: the options of the ``evbus`` dyne read once into a
frozen value.

The options and their defaults are declared once, in :data:`evbus.conf.CONFIG`
(pop-config's format, which idem and other projects that app-merge evbus
load); :data:`DEFAULTS` is taken from there. :meth:`Settings.read` checks and
converts every option of a loaded config (environment variables arrive as
text); the broker, the router and the lanes receive the :class:`Settings`
instead of looking options up.
"""
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from evbus.conf import CONFIG
from evbus.exc import ConfigError
from evbus.lane import RetryPolicy

# Options that are seconds (environment variables arrive as text)
NUMBERS = ("stop_timeout", "timeout", "publish_timeout", "retry_seconds", "retry_backoff", "retry_backoff_max")
# Numbers of seconds that 0 makes no sense for
MORE_THAN_0 = ("publish_timeout",)
# Options that are counts: whole numbers, 1 at least
COUNTS = ("max_in_flight",)
# Options that are sizes or caps: whole numbers, 0 for no bound
SIZES = ("queue_size", "lane_size", "retry_attempts")
CHOICES = {"lane_full": ("wait", "dead-letter"), "spool_sync": ("normal", "full", "off")}


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The options of the bus, checked; every field's default is that of :data:`evbus.conf.CONFIG`."""

    serialize_plugin: str
    serial_plugin: str | None
    match_plugin: str
    error_callback_ref: str | None
    stop_timeout: float
    timeout: float
    publish_timeout: float
    retry_attempts: int
    retry_seconds: float
    retry_backoff: float
    retry_backoff_max: float
    max_in_flight: int
    queue_size: int
    lane_size: int
    lane_full: str
    dead_letter_file: str | None
    spool: str | None
    spool_sync: str

    @classmethod
    def read(cls, options: Mapping | None) -> "Settings":
        """
        :param options: ``hub.OPT.evbus``, or None (no config loaded: the defaults)
        :raises ConfigError: for an option whose value is not of its kind, naming it
        """
        return cls(**{name: value(name, options.get(name) if options else None) for name in DEFAULTS})

    @property
    def retry_policy(self) -> RetryPolicy:
        """The lanes' retries and timeouts."""
        return RetryPolicy(
            attempts=self.retry_attempts,
            seconds=self.retry_seconds,
            backoff=self.retry_backoff,
            backoff_max=self.retry_backoff_max,
            timeout=self.publish_timeout,
        )


# The defaults of the bus's options, from pop-config's CONFIG
DEFAULTS: dict[str, Any] = {field.name: CONFIG[field.name]["default"] for field in dataclasses.fields(Settings)}


def value(name: str, raw: Any) -> Any:
    """
    :param name: An option of the evbus dyne
    :param raw: Its value in the loaded config
    :return: The value checked (numbers as float, counts and sizes as int), or the default when unset
    :raises ConfigError: for a value that is not of the option's kind
    """
    # No option is a mapping: pop's hub.OPT answers an empty NullMap before the config is loaded
    if raw is None or isinstance(raw, Mapping):
        return DEFAULTS[name]
    if name in NUMBERS:
        try:
            raw = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"The option {name} must be a number of seconds, not {raw!r}") from None
        if not math.isfinite(raw):
            raise ConfigError(f"The option {name} must be a finite number of seconds, not {raw!r}")
        if raw < 0:
            raise ConfigError(f"The option {name} must not be negative, not {raw!r}")
        if raw == 0 and name in MORE_THAN_0:
            raise ConfigError(f"The option {name} must be more than 0 seconds (every broker call would fail)")
    elif name in COUNTS or name in SIZES:
        try:
            raw = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"The option {name} must be a whole number, not {raw!r}") from None
        least = 1 if name in COUNTS else 0
        if raw < least:
            raise ConfigError(f"The option {name} must be at least {least}, not {raw!r}")
    elif name in CHOICES and raw not in CHOICES[name]:
        raise ConfigError(f"The option {name} must be one of {', '.join(CHOICES[name])}, not {raw!r}")
    return raw
