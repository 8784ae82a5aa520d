"""Profiles from acct data and from real encrypted acct files."""
import subprocess
import sys
import pathlib

import pytest

from evbus.exc import ConfigError
from evbus.exc import ProfileError

ACCT = pathlib.Path(sys.executable).parent / "acct"


async def test_profiles_from_acct_data(hub):
    contexts = await hub.evbus.acct.profiles(
        acct_data={
            "internal": {"default": {"routing_key": "rk"}, "other": None},
            "nobody_accepts_this": {"default": {}},
        }
    )
    assert dict(contexts) == {"internal": [{"default": {"routing_key": "rk"}}, {"other": {}}]}
    assert contexts.internal[0].default.routing_key == "rk"


async def test_profiles_list_form(hub):
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": [{"a": {}}, {"b": {"x": 1}}]})
    assert contexts["internal"] == [{"a": {}}, {"b": {"x": 1}}]


async def test_no_file_no_data_is_empty(hub):
    assert await hub.evbus.acct.profiles(acct_file=None, acct_key=None) == {}


@pytest.mark.parametrize(
    "acct_data,provider,profile",
    [
        ({"internal": "not-a-mapping"}, "internal", None),
        ({"internal": ["not-a-mapping"]}, "internal", None),
        ({"internal": {"default": "a string"}}, "internal", "default"),
        ({"internal": {"default": [1, 2]}}, "internal", "default"),
        ({"internal": {1: {}}}, "internal", "1"),
    ],
)
async def test_malformed_profiles_name_provider_and_profile(hub, acct_data, provider, profile):
    with pytest.raises(ProfileError) as info:
        await hub.evbus.acct.profiles(acct_data=acct_data)
    assert info.value.provider == provider
    assert info.value.profile == profile
    assert f"'{provider}'" in str(info.value)
    if profile:
        assert f"'{profile}'" in str(info.value)
    assert isinstance(info.value, ValueError)


async def test_malformed_contexts_at_start(hub):
    with pytest.raises(ProfileError) as info:
        await hub.evbus.init.start({"internal": {"default": "oops"}})
    assert "internal" in str(info.value) and "default" in str(info.value)
    # The bus still works afterwards
    contexts = await hub.evbus.acct.profiles(acct_data={"internal": {"default": {}}})
    await hub.evbus.broker.propagate(contexts, hub.evbus.broker.Event(body=b"1"))
    queue = await hub.ingress.internal.get()
    assert queue.get_nowait() == b"1"


def _encrypt(tmp_path, text: str) -> tuple[str, str]:
    plain = tmp_path / "creds.yml"
    plain.write_text(text)
    out = subprocess.run([str(ACCT), "encrypt", str(plain)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    return str(plain) + ".fernet", key


async def test_encrypted_acct_file(hub, tmp_path):
    acct_file, acct_key = _encrypt(
        tmp_path, "internal:\n  default:\n    routing_key: rk\n  idem-*:\n    routing_key: idem\n"
    )
    contexts = await hub.evbus.acct.profiles(acct_file=acct_file, acct_key=acct_key)
    assert contexts == {"internal": [{"default": {"routing_key": "rk"}}, {"idem-*": {"routing_key": "idem"}}]}


async def test_wrong_acct_key_is_a_clear_error_without_the_key(hub, tmp_path):
    from cryptography.fernet import Fernet

    acct_file, _ = _encrypt(tmp_path, "internal:\n  default: {}\n")
    wrong_key = Fernet.generate_key().decode()
    with pytest.raises(ConfigError) as info:
        await hub.evbus.acct.profiles(acct_file=acct_file, acct_key=wrong_key)
    assert acct_file in str(info.value)
    assert wrong_key not in str(info.value)


async def test_malformed_acct_key_is_a_clear_error_without_the_key(hub, tmp_path):
    acct_file, _ = _encrypt(tmp_path, "internal:\n  default: {}\n")
    with pytest.raises(ConfigError) as info:
        await hub.evbus.acct.profiles(acct_file=acct_file, acct_key="not-a-fernet-key")
    assert "not-a-fernet-key" not in str(info.value)


async def test_plain_text_acct_file_with_a_key_says_it_is_not_encrypted(hub, tmp_path):
    from cryptography.fernet import Fernet

    plain = tmp_path / "creds.yml"
    plain.write_text("internal:\n  default: {}\n")
    key = Fernet.generate_key().decode()
    with pytest.raises(ConfigError) as info:
        await hub.evbus.acct.profiles(acct_file=str(plain), acct_key=key)
    assert str(info.value) == (
        f"Cannot read the acct file '{plain}' with the acct key: it is not encrypted "
        f"(plain text: read it without --acct-key / ACCT_KEY)"
    )
    assert key not in str(info.value)


async def test_plain_text_acct_file_without_key(hub, tmp_path):
    plain = tmp_path / "creds.yml"
    plain.write_text("internal:\n  default:\n    routing_key: plain\n")
    contexts = await hub.evbus.acct.profiles(acct_file=str(plain))
    assert contexts == {"internal": [{"default": {"routing_key": "plain"}}]}


@pytest.mark.parametrize("content, shape", [("- internal\n- pika\n", "a list"), ("just text\n", "a str")])
async def test_an_acct_file_that_is_no_mapping_says_what_it_is(hub, tmp_path, content, shape):
    plain = tmp_path / "creds.yml"
    plain.write_text(content)
    with pytest.raises(ConfigError) as info:
        await hub.evbus.acct.profiles(acct_file=str(plain))
    assert str(info.value) == (
        f"Cannot read the acct file '{plain}': its top level is {shape}, "
        "not a mapping of provider -> profiles (internal: {default: {}})"
    )


async def test_an_encrypted_acct_file_without_its_key_says_so(hub, tmp_path):
    acct_file, _ = _encrypt(tmp_path, "internal:\n  default: {}\n")
    with pytest.raises(ConfigError) as info:
        await hub.evbus.acct.profiles(acct_file=acct_file)
    assert str(info.value) == (
        f"Cannot read the acct file '{acct_file}': it is encrypted, and needs its key (--acct-key or ACCT_KEY)"
    )
