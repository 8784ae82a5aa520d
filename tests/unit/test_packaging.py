"""The package ships what pop needs to load it from a normal (non-editable) install."""
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "evbus"


def _conf() -> dict:
    context: dict = {}
    exec((PACKAGE / "conf.py").read_text(), context)
    return context


def test_every_dyne_path_exists():
    for dyne, paths in _conf()["DYNE"].items():
        for path in paths:
            assert (PACKAGE / path.replace(".", "/")).is_dir(), f"DYNE {dyne}: {path} is missing"


def test_every_config_option_has_default_and_help():
    for name, option in _conf()["CONFIG"].items():
        assert "default" in option and option.get("help"), name


@pytest.mark.integration
def test_wheel_ships_every_plugin(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("evbus_ng-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert sources and sources <= shipped, sources - shipped
    assert any(name.endswith("entry_points.txt") for name in shipped)


def test_readme_is_valid_restructuredtext():
    import docutils.core
    import docutils.utils

    text = (ROOT / "README.rst").read_text()
    docutils.core.publish_string(
        text, writer_name="null", settings_overrides={"report_level": 2, "halt_level": 2}
    )


def test_readme_states_the_install_and_test_commands():
    text = (ROOT / "README.rst").read_text()
    assert 'pip install -e ".[test]"' in text
    assert "python -m pytest tests" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci and "python -m pytest tests" in ci
