"""
evbus: an asynchronous event bus for pop projects.
"""
import pathlib

from setuptools import find_namespace_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent


def requirements(name: str) -> list[str]:
    """Read requirements/<name>.txt, following ``-r`` includes."""
    lines = []
    for line in (HERE / "requirements" / f"{name}.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            lines.extend(requirements(line[3:].strip().removesuffix(".txt")))
        else:
            lines.append(line)
    return lines


version: dict = {}
exec((HERE / "evbus" / "version.py").read_text(), version)

setup(
    name="evbus-ng",
    version=version["version"],
    description="An asynchronous event bus for pop projects: internal queues, Kafka, RabbitMQ, NATS, Redis, MQTT and more",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    # package_dir maps the root so that an editable install adds a plain path
    # entry, which pop's dyne discovery (a scan of sys.path for conf.py) needs
    package_dir={"": "."},
    packages=find_namespace_packages(include=["evbus", "evbus.*"]),
    install_requires=requirements("base"),
    extras_require={
        "kafka": requirements("kafka"),
        "pika": requirements("pika"),
        "nats": requirements("nats"),
        "redis": requirements("redis"),
        "mqtt": requirements("mqtt"),
        "otel": requirements("otel"),
        "test": [r for r in requirements("test") if r not in requirements("base")],
    },
    entry_points={
        "console_scripts": ["evbus = evbus.scripts:start"],
        # Fixtures for projects that test their events: evbus_hub, evbus_profiles, evbus_capture
        "pytest11": ["evbus = evbus.testing"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: AsyncIO",
        "Framework :: Pytest",
    ],
)
