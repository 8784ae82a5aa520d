"""
idem 25.0.1, the main user of the bus, runs a state on evbus: its events reach
the internal ingress profiles of an acct file, one routing key per event profile.

idem is installed without its requirement pop-evbus, with everything else it
declares (``nox -s idem``); without idem these tests are skipped.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("idem", reason="idem is not installed: nox -s idem installs it beside evbus")

PROBE = pathlib.Path(__file__).parent
# The profiles idem 25.0.1 fires during a state run, and logger (--log-plugin event)
PROFILES = (
    "idem-run",
    "idem-state",
    "idem-status",
    "idem-chunk",
    "idem-low",
    "idem-high",
    "idem-exec",
    "idem-esm",
    "logger",
)
SLS = """\
first:
  test.nop
second:
  test.succeed_with_changes
third:
  exec.run:
    - path: test.ping
fourth:
  time.sleep:
    - duration: 0
"""

pytestmark = pytest.mark.integration


def _idem() -> str:
    path = shutil.which("idem", path=os.path.dirname(sys.executable))
    assert path, "the idem command is not installed beside this Python"
    return path


@pytest.fixture(scope="module")
def idem_state(tmp_path_factory):
    """
    Run ``idem state`` on the SLS with internal profiles per event profile,
    ``--log-plugin event`` and the probe project on idem's path.

    :return: (its states' results, {routing key: [decoded bodies]}, the loop's class)
    """
    tmp_path = tmp_path_factory.mktemp("idem")
    arrived = tmp_path / "arrived.json"
    acct = {"internal": {profile: {"routing_key": profile} for profile in PROFILES}}
    acct["probe"] = {"record": {"path": str(arrived)}}
    (tmp_path / "acct.yml").write_text(json.dumps(acct))
    (tmp_path / "run.sls").write_text(SLS)
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(PROBE))
    done = subprocess.run(
        [
            _idem(), "state", "run.sls",
            "--acct-file", "acct.yml",
            "--log-plugin", "event",
            "--run-name", "evbus-probe",
            "--output", "json",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert arrived.exists(), "the probe wrote nothing: the bus never stopped\n" + done.stderr
    record = json.loads(arrived.read_text())
    return json.loads(done.stdout), record["queues"], record["loop"]


def test_the_state_run_succeeds(idem_state):
    results, _, _ = idem_state
    assert {result["name"] for result in results.values()} == {"first", "second", "third", "fourth"}
    assert all(result["result"] is True for result in results.values()), results
    [changed] = [r for r in results.values() if r["name"] == "second"]
    assert changed["changes"]["testing"]["new"] == "Something pretended to change"


def test_each_event_profile_reaches_its_routing_key(idem_state):
    _, arrived, _ = idem_state
    for profile in PROFILES:
        assert arrived.get(profile), f"no event of profile {profile} reached routing key {profile}"
    bodies = [body for profile in PROFILES if profile != "logger" for body in arrived[profile]]
    assert all(body["run_name"] == "evbus-probe" for body in bodies)
    statuses = [body["message"] for body in arrived["idem-status"]]
    assert statuses[0] == "GATHERING" and statuses[-1] == "FINISHED", statuses
    state_events = {(body["tags"]["ref"], body["tags"]["type"]) for body in arrived["idem-state"]}
    assert ("states.test.nop", "state-pre") in state_events
    assert ("states.test.succeed_with_changes", "state-post") in state_events
    [exec_event] = arrived["idem-exec"]
    assert exec_event["tags"]["ref"] == "exec.test.ping" and exec_event["message"]["ret"] is True
    assert {"message", "module", "level", "timestamp"} <= set(arrived["logger"][0])


def test_idem_runs_the_bus_on_uvloop(idem_state):
    """pop-loop picks uvloop when it is installed, as idem declares it."""
    _, _, loop = idem_state
    assert loop.startswith("uvloop"), loop


def test_pip_check_reports_only_the_pop_evbus_requirement():
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("idem 25.0.1 requires pop-evbus"), done.stdout


@pytest.mark.parametrize("serializer", ["json", "msgpack", "str"])
def test_every_serializer_idem_offers_runs(tmp_path, serializer):
    """idem offers pop-serial's plugins for --serialize-plugin; evbus serves each of them."""
    done = subprocess.run(
        [_idem(), "exec", "test.ping", "--serialize-plugin", serializer, "--output", "json"],
        cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["result"] is True
