"""
Sessions:

- ``tests``: the test command of README.rst in a fresh virtual environment;
- ``lowest``: the lowest versions that ``requirements/*.txt`` allow of every
  direct dependency (broker clients included), with the unit and broker tests;
- ``newest``: the newest versions they allow, with the same tests;
- ``uvloop``: the core and broker tests on uvloop, the loop idem runs on;
- ``idem``: idem 25.0.1 (without its requirement pop-evbus, with everything
  else it declares) runs a state on evbus (``tests/idem``);
- ``mixed``: pop-evbus, evbus-kafka or evbus-pika installed beside evbus, in
  either order, in throwaway environments (``tests/mixed``);
- ``bench``: the internal benchmark.

CI (``.ci/run``) runs all but ``tests`` (it runs that command itself) and ``bench``.
"""
import email.parser
import pathlib
import re
import shutil
import tempfile
import zipfile

import nox
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).parent
REQUIREMENTS = ROOT / "requirements"
# The files of evbus's own dependencies: base and the extras
DIRECT = ("base", "kafka", "pika", "nats", "redis", "mqtt", "otel")
# The unit tests, and the broker tests that exercise each client library
UNIT = ["tests/unit"]
BROKERS = [f"tests/integration/{broker}" for broker in ("kafka", "rabbitmq", "nats", "redis", "mqtt")]
# The core tests: the whole bus on the internal ingress and app-merged plugins
CORE = [
    "tests/integration/test_bus.py",
    "tests/integration/test_delivery.py",
    "tests/integration/test_lifecycle.py",
    "tests/integration/test_log_queue.py",
    "tests/integration/test_reliability.py",
    "tests/integration/test_spool.py",
    "tests/unit/test_lane.py",
    "tests/unit/test_properties.py",
]
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
IDEM = "idem==25.0.1"
# What building the evbus-ng wheel needs
SOURCES = ("evbus", "requirements", "setup.py", "pyproject.toml", "README.rst", "LICENSE", "MANIFEST.in")

nox.options.sessions = ["lowest", "newest", "uvloop", "idem", "mixed"]


def floors() -> list[str]:
    """
    :return: ``name==version`` for the ``>=`` floor of every direct dependency in requirements/
    """
    pins = []
    for name in DIRECT:
        for line in (REQUIREMENTS / f"{name}.txt").read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            requirement = Requirement(line)
            lowest = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            if not lowest:
                raise ValueError(f"requirements/{name}.txt: {line!r} states no lowest version (>=)")
            pins.append(f"{requirement.name}=={lowest[0]}")
    return pins


@nox.session
def tests(session):
    session.install("-e", ".[test]")
    session.run(*PYTEST, "tests", *session.posargs)


@nox.session
def lowest(session):
    """The unit and broker tests on the lowest version of every direct dependency."""
    constraints = pathlib.Path(session.create_tmp()) / "lowest.txt"
    constraints.write_text("\n".join(floors()) + "\n")
    session.install("-c", str(constraints), "-e", ".[test]")
    session.run("python", "-m", "pip", "freeze")
    session.run(*PYTEST, *UNIT, *BROKERS, *session.posargs)


@nox.session
def newest(session):
    """The unit and broker tests on the newest version of every dependency."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[test]")
    session.run("python", "-m", "pip", "freeze")
    session.run(*PYTEST, *UNIT, *BROKERS, *session.posargs)


@nox.session
def uvloop(session):
    """The core and broker tests with every test's loop a uvloop loop."""
    session.install("-e", ".[test]")
    session.run(*PYTEST, "--uvloop", "tests/unit/test_loop.py", *CORE, *BROKERS, *session.posargs)


def idem_requirements(session) -> list[str]:
    """
    :return: What idem declares (Requires-Dist of its wheel), less pop-evbus and its extras
    """
    where = tempfile.mkdtemp(dir=session.create_tmp())
    session.run("python", "-m", "pip", "download", "--quiet", "--no-deps", "-d", where, IDEM)
    [wheel] = pathlib.Path(where).glob("idem-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if re.fullmatch(r"idem-[^/]+\.dist-info/METADATA", n)]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    keep = []
    for line in metadata.get_all("Requires-Dist"):
        requirement = Requirement(line)
        if requirement.name == "pop-evbus":
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        keep.append(str(requirement))
    return keep


def wheel(session) -> str:
    """
    :return: The path of an evbus-ng wheel, built from a copy of the sources
        (so that no build output lands in the work tree, nor stale files in the wheel)
    """
    source = pathlib.Path(tempfile.mkdtemp(dir=session.create_tmp()))
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    session.run(
        "python", "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(source / "dist"), str(source)
    )
    [built] = (source / "dist").glob("evbus_ng-*.whl")
    return str(built)


@nox.session
def idem(session):
    """idem 25.0.1 on evbus: an ``idem state`` run, its events, uvloop, and ``pip check``."""
    session.install("--no-deps", IDEM)
    session.install(*idem_requirements(session))
    built = wheel(session)
    session.install(built, "pytest>=8,<9.2", "pytest-timeout>=2.3")
    # Again, forced: a reused environment holds a wheel of the same version, built from older sources
    session.install("--force-reinstall", "--no-deps", built)
    # --noconftest: the suite's conftest needs evbus's test requirements, which an idem environment lacks
    session.run(
        *PYTEST, "--noconftest", "-W", "ignore::pytest.PytestConfigWarning", "tests/idem", *session.posargs
    )


@nox.session
def mixed(session):
    """pop-evbus, evbus-kafka or evbus-pika beside evbus: loading the dyne names the one to uninstall."""
    session.install("pytest>=8,<9.2", "pytest-timeout>=2.3")
    session.run(
        *PYTEST, "--noconftest", "-W", "ignore::pytest.PytestConfigWarning", "tests/mixed", *session.posargs,
        env={"EVBUS_MIXED": "1"},
    )


@nox.session
def bench(session):
    session.install("-e", ".")
    session.run("python", "bench/internal.py", *session.posargs)
