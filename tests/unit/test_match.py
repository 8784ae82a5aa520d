"""Profile name patterns: glob by default, regex by choice."""
import pytest


@pytest.mark.parametrize(
    "name,pattern,expected",
    [
        ("default", "default", True),
        ("idem-run", "idem-*", True),
        ("idem-run", "idem-?un", True),
        ("other", "idem-*", False),
        ("Default", "default", False),
        ("a[b", "a[[]b", True),
    ],
)
def test_glob(hub, name, pattern, expected):
    assert hub.match.glob.find(name, pattern) is expected


@pytest.mark.parametrize(
    "name,pattern,expected",
    [
        ("idem-run", "idem-.*", True),
        ("idem-run", "idem", False),
        ("xidem-run", "idem-.*", False),
        ("a", "a|b", True),
    ],
)
def test_regex_full_match(hub, name, pattern, expected):
    assert hub.match.regex.find(name, pattern) is expected


def test_default_plugin_is_glob(hub):
    assert hub.match.PLUGIN == "glob"
    assert hub.match.init.find("idem-run", "idem-*") is True
