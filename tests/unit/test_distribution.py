"""
The guard against distributions that collide with evbus: what it finds and
says, on distributions made in a temporary directory, and that loading the
dyne stops at once (tests/mixed installs the real ones in throwaway
environments).
"""
import base64
import hashlib
import importlib.metadata
import pathlib

import pop.hub
import pytest

import evbus.distribution
from evbus.distribution import NAME
from evbus.exc import DistributionConflictError
from evbus.exc import EvbusError

# A stand-in of evbus's evbus/init.py and of pop-evbus's
OURS = b'"""evbus-ng"""\n'
THEIRS = b'"""pop-evbus"""\n'


def _digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def make_dist(
    site: pathlib.Path, name: str, version: str, files: dict[str, bytes]
) -> importlib.metadata.Distribution:
    """A distribution in ``site`` whose RECORD lists ``files`` with their hashes (it writes none of them)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{path},sha256={_digest(content)},{len(content)}" for path, content in files.items()]
    (info / "RECORD").write_text("\n".join(record + [f"{info.name}/RECORD,,"]) + "\n")
    return importlib.metadata.PathDistribution(info)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """
    A site directory whose distributions the guard sees instead of the real ones;
    ``site.install(name, version, files, write=True)`` adds one.
    """
    found: dict[str, importlib.metadata.Distribution] = {}

    class Site:
        path = tmp_path

        @staticmethod
        def install(name: str, version: str, files: dict[str, bytes], write: bool = True):
            found[name] = make_dist(tmp_path, name, version, files)
            if write:
                for path, content in files.items():
                    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                    (tmp_path / path).write_bytes(content)

    monkeypatch.setattr(evbus.distribution, "_distribution", found.get)
    evbus.distribution.conflict.cache_clear()
    yield Site
    evbus.distribution.conflict.cache_clear()


def test_nothing_collides(site):
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS})
    assert evbus.distribution.conflict() is None
    evbus.distribution.check()


def test_pop_evbus_installed_last_is_named_with_the_repair(site):
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS, "evbus/lane.py": b"lane\n"})
    site.install("pop-evbus", "7.0.1", {"evbus/evbus/init.py": THEIRS})
    with pytest.raises(DistributionConflictError) as caught:
        evbus.distribution.check()
    text = str(caught.value)
    assert text.startswith(f"evbus cannot load: {NAME} 1.0.0 is installed together with pop-evbus 7.0.1")
    assert "pop-evbus was installed last: its files replaced evbus-ng's" in text
    assert "not evbus-ng's own: evbus/evbus/init.py" in text
    assert text.splitlines()[-1] == (
        "Uninstall pop-evbus, then load evbus again: "
        "pip uninstall -y pop-evbus && pip install --force-reinstall --no-deps evbus-ng"
    )
    assert isinstance(caught.value, EvbusError) and isinstance(caught.value, RuntimeError)


def test_evbus_installed_last_over_pop_evbus_says_its_uninstall_deletes_files(site):
    site.install("pop-evbus", "6.2.3", {"evbus/evbus/init.py": THEIRS}, write=False)
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS})
    text = evbus.distribution.conflict()
    assert "evbus-ng was installed last: uninstalling pop-evbus deletes files evbus-ng needs" in text
    assert "not evbus-ng's own" not in text
    assert text.endswith("pip uninstall -y pop-evbus && pip install --force-reinstall --no-deps evbus-ng")


@pytest.mark.parametrize("name,extra", [("evbus-kafka", "kafka"), ("evbus-pika", "pika")])
def test_a_companion_plugin_is_named_alone(site, name, extra):
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS})
    site.install(name, "5.0.0", {f"{name.replace('-', '_')}/conf.py": b"DYNE = {}\n"})
    text = evbus.distribution.conflict()
    assert f"installed together with {name} 5.0.0" in text
    assert f"the {extra} extra serves" in text
    assert text.splitlines()[-1] == f"Uninstall {name}, then load evbus again: pip uninstall -y {name}"


def test_every_colliding_distribution_is_named_in_one_command(site):
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS})
    site.install("pop-evbus", "7.0.1", {"evbus/evbus/init.py": THEIRS}, write=False)
    site.install("evbus-kafka", "5.0.0", {})
    text = evbus.distribution.conflict()
    assert text.splitlines()[-1].endswith(
        "pip uninstall -y pop-evbus evbus-kafka && pip install --force-reinstall --no-deps evbus-ng"
    )


def test_files_of_evbus_that_were_removed_are_named(site):
    site.install(NAME, "1.0.0", {"evbus/evbus/init.py": OURS, "evbus/conf.py": b"DYNE = {}\n"})
    (site.path / "evbus" / "conf.py").unlink()
    text = evbus.distribution.conflict()
    assert text.startswith("evbus cannot load: files of evbus-ng 1.0.0 were replaced or removed")
    assert "not evbus-ng's own: evbus/conf.py" in text
    assert text.splitlines()[-1] == (
        "Reinstall evbus, then load evbus again: pip install --force-reinstall --no-deps evbus-ng"
    )


def test_an_editable_install_records_no_files_to_check(site):
    site.install(NAME, "1.0.0", {"__editable__.evbus_ng-1.0.0.pth": b"/src\n"})
    assert evbus.distribution.conflict() is None


def test_the_installed_evbus_is_this_distribution():
    assert importlib.metadata.distribution(NAME).version == importlib.metadata.version(NAME)
    assert 'name="evbus-ng"' in (pathlib.Path(__file__).parents[2] / "setup.py").read_text()


@pytest.fixture
def colliding(monkeypatch):
    monkeypatch.setattr(evbus.distribution, "conflict", lambda: "evbus cannot load: pop-evbus 7.0.1 ...")


def test_loading_the_evbus_dyne_stops_at_once(colliding):
    hub = pop.hub.Hub()
    with pytest.raises(DistributionConflictError, match="pop-evbus 7.0.1"):
        hub.pop.sub.add(dyne_name="evbus")


def test_loading_the_ingress_dyne_stops_too(colliding):
    """pop-evbus's own evbus/init.py adds the ingress dyne: evbus's ingress/init.py stops it there."""
    hub = pop.hub.Hub()
    with pytest.raises(DistributionConflictError, match="pop-evbus 7.0.1"):
        hub.pop.sub.add(dyne_name="ingress")
