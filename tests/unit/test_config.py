"""Options through pop-config: command line, environment, config file; and apps that extend them."""
import asyncio
import subprocess
import sys
import textwrap

import msgpack
import pop.hub
import pytest

from evbus.settings import DEFAULTS
from evbus.exc import ConfigError


def _load(hub, monkeypatch, argv=(), env=None):
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["evbus", *argv])
    hub.pop.config.load(["evbus"], cli="evbus", logs=False)
    return hub.OPT.evbus


def test_defaults(hub):
    opt = hub.OPT.evbus
    assert opt.serialize_plugin == "json"
    assert opt.serial_plugin is None
    assert opt.match_plugin == "glob"
    assert opt.error_callback_ref is None
    assert opt.stop_timeout == 30.0


def test_command_line(hub, monkeypatch):
    opt = _load(
        hub,
        monkeypatch,
        ["--serialize-plugin", "msgpack", "--error-callback-ref", "my_app.errors.handle", "--match-plugin", "regex",
         "--stop-timeout", "2.5"],
    )
    assert opt.serialize_plugin == "msgpack"
    assert opt.error_callback_ref == "my_app.errors.handle"
    assert opt.match_plugin == "regex"
    assert opt.stop_timeout == 2.5


def test_environment(hub, monkeypatch):
    opt = _load(
        hub,
        monkeypatch,
        env={"EVBUS_SERIALIZE_PLUGIN": "msgpack", "EVBUS_MATCH_PLUGIN": "regex", "EVBUS_STOP_TIMEOUT": "7"},
    )
    assert (opt.serialize_plugin, opt.match_plugin) == ("msgpack", "regex")
    assert hub.evbus.settings.get("stop_timeout") == 7.0


async def test_stop_timeout_that_is_no_number(hub, monkeypatch):
    _load(hub, monkeypatch, env={"EVBUS_STOP_TIMEOUT": "soon"})
    with pytest.raises(ConfigError) as info:
        await hub.evbus.broker.init()
    assert "stop_timeout" in str(info.value) and "soon" in str(info.value)


def test_retry_options(hub, monkeypatch):
    """retry_attempts 0 (the default) sets no cap: the seconds budget decides; a positive value caps."""
    monkeypatch.delenv("EVBUS_RETRY_ATTEMPTS")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    policy = hub.evbus.settings.retry_policy()
    assert (policy.attempts, policy.seconds) == (0, 30.0)
    monkeypatch.setenv("EVBUS_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("EVBUS_RETRY_SECONDS", "12")
    hub.pop.config.load(["evbus"], cli="evbus", parse_cli=False, logs=False)
    policy = hub.evbus.settings.retry_policy()
    assert (policy.attempts, policy.seconds) == (5, 12.0)


async def test_negative_retry_attempts_is_a_config_error(hub, monkeypatch):
    _load(hub, monkeypatch, env={"EVBUS_RETRY_ATTEMPTS": "-1"})
    with pytest.raises(ConfigError) as info:
        await hub.evbus.broker.init()
    assert "retry_attempts" in str(info.value) and "at least 0" in str(info.value)


def test_config_file(hub, monkeypatch, tmp_path):
    config = tmp_path / "evbus.yml"
    config.write_text("evbus:\n  serialize_plugin: msgpack\n  error_callback_ref: a.b.c\n")
    opt = _load(hub, monkeypatch, ["--config", str(config)])
    assert opt.serialize_plugin == "msgpack" and opt.error_callback_ref == "a.b.c"


def test_command_line_beats_environment(hub, monkeypatch):
    opt = _load(hub, monkeypatch, ["--serialize-plugin", "json"], env={"EVBUS_SERIALIZE_PLUGIN": "msgpack"})
    assert opt.serialize_plugin == "json"


def test_config_reaches_the_bus(hub, monkeypatch):
    _load(hub, monkeypatch, ["--serialize-plugin", "msgpack", "--match-plugin", "regex"])
    hub.evbus.broker.put_nowait(body={"a": 1})
    event = hub.evbus.BUS.get_nowait()
    assert msgpack.unpackb(event.body) == {"a": 1}
    assert hub.serialize.PLUGIN == hub.evbus.SERIAL_PLUGIN == "msgpack"
    assert hub.match.PLUGIN == "regex"


def test_serial_plugin_option_wins(hub, monkeypatch):
    _load(hub, monkeypatch, ["--serial-plugin", "msgpack"])
    hub.evbus.broker.put_nowait(body=[1])
    assert msgpack.unpackb(hub.evbus.BUS.get_nowait().body) == [1]


@pytest.mark.parametrize("option", ["--serialize-plugin", "--match-plugin"])
async def test_unknown_plugin_names_are_config_errors_at_load(hub, monkeypatch, option):
    _load(hub, monkeypatch, [option, "nope"])
    with pytest.raises(ConfigError) as info:
        await hub.evbus.broker.init()
    assert "'nope'" in str(info.value)
    with pytest.raises(ConfigError):
        await hub.evbus.init.start({"internal": {"default": {}}})


async def test_error_callback_ref_naming_nothing_is_a_config_error(hub, monkeypatch):
    _load(hub, monkeypatch, ["--error-callback-ref", "no_such.sub.func"])
    with pytest.raises(ConfigError) as info:
        await hub.evbus.init.start({"internal": {"default": {}}})
    assert "no_such.sub.func" in str(info.value)


def test_app_that_declares_evbus_options_like_idem(tmp_path):
    """An app whose conf adds serialize_plugin and error_callback_ref to the evbus dyne, as idem does."""
    app = tmp_path / "myapp"
    (app / "myapp").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "conf.py").write_text(
        textwrap.dedent(
            """
            CLI_CONFIG = {
                "serialize_plugin": {
                    "source": "evbus",
                    "subcommands": ["_global_"],
                    "loaded_mod_choices_ref": "serialize",
                    "dyne": "evbus",
                },
                "error_callback_ref": {"source": "evbus", "subcommands": ["_global_"]},
            }
            CONFIG = {
                "error_callback_ref": {
                    "source": "evbus",
                    "default": "myapp.init.handler",
                    "help": "overridden default",
                },
            }
            SUBCOMMANDS = {"run": {"help": "run", "dyne": "myapp"}}
            DYNE = {"myapp": ["myapp"]}
            """
        )
    )
    (app / "myapp" / "init.py").write_text("def handler(hub, error_data):\n    pass\n")
    code = textwrap.dedent(
        """
        import sys, pop.hub
        sys.argv = ["myapp", "--serialize-plugin", "msgpack", "run"]
        hub = pop.hub.Hub()
        hub.pop.sub.add(dyne_name="evbus")
        hub.pop.sub.add(dyne_name="myapp")
        hub.pop.config.load(["myapp", "evbus"], cli="myapp", logs=False)
        hub.evbus.SERIAL_PLUGIN = hub.OPT.evbus.serial_plugin
        hub.evbus.broker.put_nowait(profile="p", body=[1])
        assert hub.evbus.report.error_callback() == hub.myapp.init.handler
        print(hub.OPT.evbus.serialize_plugin, hub.OPT.evbus.error_callback_ref, hub.evbus.BUS.get_nowait().body)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["msgpack", "myapp.init.handler", repr(msgpack.packb([1]))]


async def test_a_hub_whose_config_was_never_loaded_runs_on_the_defaults():
    """pop answers hub.OPT with empty maps before a config is loaded (pytest-pop's hub, say)."""
    hub = pop.hub.Hub()
    hub.pop.sub.add(dyne_name="evbus")
    for name, default in DEFAULTS.items():
        assert hub.evbus.settings.get(name) == default, name
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {"routing_key": "q"}}})
    listener = asyncio.create_task(hub.evbus.init.start(contexts))
    await hub.evbus.init.join(timeout=10)
    await hub.evbus.broker.put(body=1)
    assert await hub.evbus.init.stop() == 0
    await listener
    queue = await hub.ingress.internal.get("q")
    assert queue.get_nowait() == b"1"
