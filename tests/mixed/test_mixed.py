"""
pop-evbus, evbus-kafka or evbus-pika installed beside evbus-ng, in either
order, in throwaway virtual environments: loading the evbus dyne fails at once
naming what to uninstall, and the command it gives repairs the environment.

Slow (a virtual environment per test, wheels built once): ``nox -s mixed``
runs them; elsewhere they are skipped unless ``EVBUS_MIXED=1``.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

if os.environ.get("EVBUS_MIXED") != "1":
    pytest.skip("throwaway environments are slow: nox -s mixed runs these", allow_module_level=True)

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What building the evbus-ng wheel needs, copied so that no build output lands in the work tree
SOURCES = ("evbus", "requirements", "setup.py", "pyproject.toml", "README.rst", "LICENSE", "MANIFEST.in")
FOREIGN = ("pop-evbus==7.0.1", "evbus-kafka==5.0.0", "evbus-pika==5.0.0")
# Load the dyne as a pop project does; evbus.evbus.route is evbus's alone
LOAD = (
    "import pop.hub\n"
    "hub = pop.hub.Hub()\n"
    "hub.pop.sub.add(dyne_name='evbus')\n"
    "print(hub.evbus.route.router.ref)\n"
)
REPAIR = "then load evbus again: "
# A project's own test run, with evbus's pytest plugin
PYTEST = ("pytest>=8", "pytest-asyncio>=0.23")


def run(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> pathlib.Path:
    """Wheels of evbus-ng, pop-evbus, evbus-kafka, evbus-pika and all they need."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    house = tmp_path_factory.mktemp("wheels")
    done = run(sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(house), str(source), *FOREIGN, *PYTEST)
    assert done.returncode == 0, done.stderr
    return house


class Env:
    """A virtual environment that installs from the wheelhouse alone."""

    def __init__(self, path: pathlib.Path, house: pathlib.Path):
        self.path = path
        self.house = house
        done = run(sys.executable, "-m", "venv", str(path))
        assert done.returncode == 0, done.stderr
        self.python = str(path / "bin" / "python")

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        if args[0] == "install":
            args = (*args, "--no-index", "--find-links", str(self.house))
        done = run(self.python, "-m", "pip", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def load(self) -> subprocess.CompletedProcess:
        return run(self.python, "-c", LOAD, cwd=self.path)

    def refused(self) -> str:
        """:return: The error text of a dyne load that must fail"""
        done = self.load()
        assert done.returncode != 0, done.stdout
        assert "DistributionConflictError: evbus cannot load:" in done.stderr, done.stderr
        return done.stderr[done.stderr.index("evbus cannot load:"):]

    def repair(self, message: str):
        """Run the commands the message ends with, as its user would."""
        [line] = [line for line in message.splitlines() if REPAIR in line]
        for command in line.split(REPAIR, 1)[1].split(" && "):
            program, *args = command.split()
            assert program == "pip", command
            self.pip(*args)

    def command(self) -> str:
        """:return: The error text of an ``evbus`` command that must fail: one message, no traceback"""
        done = run(str(self.path / "bin" / "evbus"), "profiles", cwd=self.path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("evbus cannot load:"), done.stderr
        return done.stderr

    def loads(self):
        done = self.load()
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "evbus.route"


@pytest.fixture
def env(tmp_path, wheelhouse) -> Env:
    return Env(tmp_path / "venv", wheelhouse)


def test_pop_evbus_installed_after_evbus(env):
    env.pip("install", "evbus-ng")
    env.loads()
    env.pip("install", "pop-evbus==7.0.1")
    message = env.refused()
    assert message.startswith("evbus cannot load: evbus-ng 1.0.0 is installed together with pop-evbus 7.0.1")
    assert "- pop-evbus was installed last: its files replaced evbus-ng's" in message
    assert "evbus/evbus/init.py" in message
    assert message.rstrip().endswith(
        "pip uninstall -y pop-evbus && pip install --force-reinstall --no-deps evbus-ng"
    )
    assert env.command() == message
    env.repair(message)
    env.loads()


def test_evbus_installed_after_pop_evbus(env):
    env.pip("install", "pop-evbus==7.0.1")
    env.pip("install", "evbus-ng")
    message = env.refused()
    assert message.startswith("evbus cannot load: evbus-ng 1.0.0 is installed together with pop-evbus 7.0.1")
    assert "- evbus-ng was installed last: uninstalling pop-evbus deletes files evbus-ng needs" in message
    env.repair(message)
    env.loads()


def test_uninstalling_pop_evbus_alone_is_repaired_by_a_reinstall(env):
    """What the message warns of: pop-evbus's uninstall takes the files the two share."""
    env.pip("install", "pop-evbus==7.0.1")
    env.pip("install", "evbus-ng")
    env.pip("uninstall", "-y", "pop-evbus")
    assert env.load().returncode != 0  # no evbus/conf.py: pop finds no evbus dyne
    # The evbus command says what happened, and how to repair it
    message = env.command()
    assert message.startswith("evbus cannot load: files of evbus-ng 1.0.0 were replaced or removed")
    assert "evbus/conf.py" in message
    assert message.rstrip().endswith(
        "Reinstall evbus, then load evbus again: pip install --force-reinstall --no-deps evbus-ng"
    )
    env.repair(message)
    env.loads()


def test_evbus_kafka_with_what_it_needs(env):
    """evbus-kafka brings pop-evbus, which overwrites evbus's files: both are named."""
    env.pip("install", "evbus-ng")
    env.pip("install", "evbus-kafka==5.0.0")
    message = env.refused()
    assert "installed together with pop-evbus 7.0.1, evbus-kafka 5.0.0" in message
    assert "- evbus-kafka: its kafka ingress plugin would merge with evbus's" in message
    assert message.rstrip().endswith(
        "pip uninstall -y pop-evbus evbus-kafka && pip install --force-reinstall --no-deps evbus-ng"
    )
    env.repair(message)
    env.loads()


def test_evbus_pika_alone(env):
    env.pip("install", "evbus-ng")
    env.pip("install", "--no-deps", "evbus-pika==5.0.0")
    message = env.refused()
    assert message.startswith("evbus cannot load: evbus-ng 1.0.0 is installed together with evbus-pika 5.0.0")
    assert message.rstrip().endswith(
        "Uninstall evbus-pika, then load evbus again: pip uninstall -y evbus-pika"
    )
    env.repair(message)
    env.loads()


def test_the_pytest_plugin_in_a_project_that_turns_warnings_into_errors(env, tmp_path):
    """Installed from its wheel, evbus's pytest plugin warns of nothing, and its fixtures work."""
    env.pip("install", "evbus-ng", *PYTEST)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\nfilterwarnings =\n    error\n"
    )
    (project / "test_events.py").write_text(
        "async def test_an_event(evbus_hub, evbus_capture):\n"
        "    await evbus_hub.evbus.broker.put(profile='p', body={'n': 1})\n"
        "    await evbus_capture.settle()\n"
        "    assert evbus_capture.bodies(profile='p') == [{'n': 1}]\n"
    )
    done = run(env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "warning" not in done.stdout.lower(), done.stdout
