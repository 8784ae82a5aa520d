"""The settings: read once into a frozen value; defaults declared once, in conf.CONFIG; calls go one way."""
import ast
import dataclasses
import pathlib

import pytest

import evbus
from evbus.conf import CONFIG
from evbus.exc import ConfigError
from evbus.settings import DEFAULTS
from evbus.settings import Settings

HUB_MODULES = pathlib.Path(evbus.__file__).parent / "evbus"


def test_the_defaults_are_those_of_pop_configs_config():
    assert DEFAULTS == {name: CONFIG[name]["default"] for name in DEFAULTS}
    assert Settings.read(None) == Settings(**DEFAULTS)


def test_settings_are_frozen_and_checked():
    settings = Settings.read({"queue_size": "7", "stop_timeout": "2.5", "lane_full": "dead-letter"})
    assert (settings.queue_size, settings.stop_timeout, settings.lane_full) == (7, 2.5, "dead-letter")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue_size = 1
    with pytest.raises(ConfigError, match="max_in_flight"):
        Settings.read({"max_in_flight": "0"})


@pytest.mark.parametrize(
    "options,message",
    [
        ({"publish_timeout": "nan"}, "publish_timeout must be a finite number of seconds, not nan"),
        ({"stop_timeout": "inf"}, "stop_timeout must be a finite number of seconds, not inf"),
        ({"retry_seconds": "-1"}, "retry_seconds must not be negative"),
        ({"publish_timeout": "0"}, "publish_timeout must be more than 0 seconds"),
    ],
)
def test_seconds_are_finite_and_a_publish_timeout_is_more_than_0(options, message):
    with pytest.raises(ConfigError, match=message):
        Settings.read(options)


def test_0_seconds_means_what_it_says_where_it_can(hub):
    settings = Settings.read({"stop_timeout": "0", "retry_seconds": "0", "timeout": "0"})
    assert (settings.stop_timeout, settings.retry_seconds, settings.timeout) == (0, 0, 0)


def test_the_hub_reads_them_once_per_loaded_config(hub, monkeypatch):
    first = hub.evbus.settings.read()
    assert hub.evbus.settings.read() is first
    monkeypatch.setenv("EVBUS_QUEUE_SIZE", "3")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    assert hub.evbus.settings.read().queue_size == 3 and hub.evbus.settings.get("queue_size") == 3


def _hub_calls(module: str) -> set[str]:
    """The subs of hub.evbus that a hub module of evbus calls: hub.evbus.<name>.<...>"""
    tree = ast.parse((HUB_MODULES / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "evbus"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "hub"
        ):
            found.add(node.attr)
    return found


@pytest.mark.parametrize(
    "module, calls_none_of",
    [
        ("settings", {"broker", "route", "init", "spool"}),
        ("spool", {"broker", "route", "init"}),
        ("report", {"broker", "init", "shutdown"}),
        ("shutdown", {"broker", "init"}),
        ("contexts", {"broker", "route", "init"}),
    ],
)
def test_calls_go_one_way(module, calls_none_of):
    """A module never calls back into one that calls it."""
    assert not _hub_calls(module) & calls_none_of
