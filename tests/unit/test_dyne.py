"""The evbus dyne loads with every sub and plugin, installed or editable."""
import subprocess
import sys

import pytest


def test_dyne_is_not_empty(hub):
    for name in ("init", "broker", "acct", "route", "settings"):
        assert name in hub.evbus._loaded or hasattr(hub.evbus, name), name
    assert callable(hub.evbus.broker.put)
    assert callable(hub.evbus.init.start)


def test_subs_added_with_evbus(hub):
    for sub in ("acct", "ingress", "serialize", "match", "output"):
        assert hasattr(hub, sub), sub
    assert hub.ingress.internal.ACCT == ["internal"]
    assert {"json", "msgpack"} <= {mod.__name__ for mod in hub.serialize}
    assert {"glob", "regex"} <= {mod.__name__ for mod in hub.match}
    assert hasattr(hub.log, "queue")


def test_dyne_loads_outside_the_source_tree(tmp_path):
    """From another directory pop must still find the dyne (the install, not the cwd)."""
    code = (
        "import pop.hub\n"
        "hub = pop.hub.Hub()\n"
        "hub.pop.sub.add(dyne_name='evbus')\n"
        "assert 'broker' in [m.__name__ for m in hub.evbus], list(hub.evbus)\n"
        "print(hub.evbus.broker.put.ref)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "evbus.broker" in out.stdout


def test_event_dataclass(hub):
    Event = hub.evbus.broker.Event
    seed = Event("prof", "rk", b"{}")
    assert (seed.profile, seed.routing_key, seed.body) == ("prof", "rk", b"{}")
    modern = Event(body=b"x", profile="p")
    assert modern.routing_key is None
    assert seed.id != modern.id
    with pytest.raises(AttributeError):
        seed.body = b"changed"


@pytest.mark.parametrize(
    "plugin,library,extra",
    [
        ("kafka", "aiokafka", "kafka"),
        ("pika", "aio_pika", "pika"),
        ("nats", "nats", "nats"),
        ("redis", "redis", "redis"),
        ("mqtt", "aiomqtt", "mqtt"),
    ],
)
def test_broker_plugin_without_its_library_says_which_extra(tmp_path, plugin, library, extra):
    code = (
        "import sys\n"
        f"sys.modules[{library!r}] = None\n"
        "import pop.hub\n"
        "hub = pop.hub.Hub()\n"
        "hub.pop.sub.add(dyne_name='evbus')\n"
        f"assert {plugin!r} not in [m.__name__ for m in hub.ingress]\n"
        f"print(hub.ingress._load_errors[{plugin!r}].edict['verror'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f'pip install "evbus-ng[{extra}]"' in out.stdout


@pytest.mark.parametrize(
    "inside,reason",
    [
        ("import a_dependency_it_lacks\n", "No module named 'a_dependency_it_lacks'"),
        ("raise ImportError('libmqtt.so: cannot open shared object file')\n", "libmqtt.so: cannot open shared object file"),
        ("raise RuntimeError('aiomqtt is broken')\n", "aiomqtt is broken"),
    ],
)
def test_broker_plugin_whose_library_is_installed_but_broken_says_why(tmp_path, inside, reason):
    """A client library that is there but fails to import: its own error, not the hint to install the extra."""
    (tmp_path / "aiomqtt").mkdir()
    (tmp_path / "aiomqtt" / "__init__.py").write_text(inside)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import pop.hub\n"
        "hub = pop.hub.Hub()\n"
        "hub.pop.sub.add(dyne_name='evbus')\n"
        "assert 'mqtt' not in [m.__name__ for m in hub.ingress]\n"
        "error = hub.ingress._load_errors['mqtt']\n"
        "print(error.edict.get('verror') or error.edict['exception'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert reason in out.stdout and "pip install" not in out.stdout


def test_profiles_of_a_plugin_without_its_library_are_named_at_start(tmp_path):
    """Each profile of a provider whose plugin cannot load gets a warning that says which extra to install."""
    code = (
        "import asyncio, logging, sys\n"
        "sys.modules['aio_pika'] = None\n"
        "import pop.hub\n"
        "hub = pop.hub.Hub()\n"
        "hub.pop.sub.add(dyne_name='evbus')\n"
        "hub.pop.config.load(['evbus'], cli='evbus', parse_cli=False, logs=False)\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)\n"
        "data = {'amqp': {'one': {}, 'two': {}}, 'internal': {'default': {}}}\n"
        "contexts = asyncio.run(hub.evbus.acct.profiles(acct_data=data))\n"
        "print(sorted(contexts))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for profile in ("one", "two"):
        [line] = [line for line in lines if f"Profile '{profile}' of acct provider 'amqp'" in line]
        assert "ingress.pika cannot load" in line and 'pip install "evbus-ng[pika]"' in line
    assert lines[-1] == "['internal']"


def test_profiles_of_a_plugin_whose_library_is_too_old_say_why_at_start(tmp_path):
    """A redis-py without a name the plugin imports (as one older than the extra's floor): each profile is named, and why."""
    code = (
        "import asyncio, logging, sys\n"
        "import redis.backoff\n"
        "del redis.backoff.NoBackoff\n"
        "import pop.hub\n"
        "hub = pop.hub.Hub()\n"
        "hub.pop.sub.add(dyne_name='evbus')\n"
        "hub.pop.config.load(['evbus'], cli='evbus', parse_cli=False, logs=False)\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)\n"
        "data = {'redis': {'one': {}, 'two': {}}, 'internal': {'default': {}}}\n"
        "contexts = asyncio.run(hub.evbus.acct.profiles(acct_data=data))\n"
        "print(sorted(contexts))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for profile in ("one", "two"):
        [line] = [line for line in lines if f"Profile '{profile}' of acct provider 'redis'" in line]
        assert "ingress.redis cannot load" in line and 'pip install "evbus-ng[redis]"' in line
        assert "cannot import name 'NoBackoff'" in line
    assert lines[-1] == "['internal']"


async def test_a_provider_no_plugin_serves_is_a_warning(hub, caplog):
    """A typo in a provider is named, with the provider meant and those that exist."""
    with caplog.at_level("WARNING"):
        contexts = await hub.evbus.acct.profiles(
            acct_data={"rediss": {"r": {}}, "internal": {"default": {}}}
        )
    assert list(contexts) == ["internal"]
    [record] = [r for r in caplog.records if "rediss" in r.getMessage()]
    text = record.getMessage()
    assert "did you mean 'redis'?" in text and "internal" in text and "kafka" in text
