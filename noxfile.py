"""
Sessions: ``nox -s tests`` runs the test command of README.rst in a fresh
virtual environment; ``nox -s bench`` runs the internal benchmark.
"""
import nox


@nox.session
def tests(session):
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def bench(session):
    session.install("-e", ".")
    session.run("python", "bench/internal.py", *session.posargs)
