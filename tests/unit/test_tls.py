"""
The tls block of broker profiles: the SSL context it makes, what a failed
handshake means, and how each plugin hands TLS to its client library (no
broker here: tests/integration/test_tls.py talks to real TLS servers).
"""
import ssl

import dict_tools.data as data
import pytest

from evbus import tls
from evbus.exc import TlsConfigError
from evbus.exc import TlsRefusedError
from evbus.mask import Masker
from tests import certs as tls_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tls_certs.Certs:
    return tls_certs.make(tmp_path_factory.mktemp("certs"))


def ctx(profile: dict):
    return data.NamespaceDict(acct=data.NamespaceDict(profile))


def test_defaults_verify_with_the_system_trust_store_and_check_host_names():
    context = tls.TlsOptions.parse({}).context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] > 0  # the system's CAs


def test_a_private_ca_alone_is_trusted(certs):
    context = tls.TlsOptions.parse({"ca_file": certs.ca}).context()
    assert context.cert_store_stats()["x509_ca"] == 1
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


@pytest.mark.parametrize("value", [False, "false", "no", "off", "0"])
def test_check_hostname_false_turns_only_the_host_name_check_off(certs, value):
    context = tls.TlsOptions.parse({"ca_file": certs.ca, "check_hostname": value}).context()
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


def test_client_certificate_with_its_password(certs):
    options = tls.TlsOptions.parse(
        {
            "cert_file": certs.client.cert,
            "key_file": certs.client.key,
            "password": tls_certs.CLIENT_KEY_PASSWORD,
        }
    )
    assert isinstance(options.context(), ssl.SSLContext)
    assert tls_certs.CLIENT_KEY_PASSWORD not in repr(options)


def test_an_encrypted_key_without_its_password_is_an_error_not_a_prompt(certs):
    with pytest.raises(TlsConfigError) as info:
        tls.TlsOptions.parse({"cert_file": certs.client.cert, "key_file": certs.client.key}).context()
    assert "encrypted" in str(info.value) and "password" in str(info.value)


def test_a_wrong_password_is_named(certs):
    block = {"cert_file": certs.client.cert, "key_file": certs.client.key, "password": "wrong"}
    with pytest.raises(TlsConfigError) as info:
        tls.TlsOptions.parse(block).context()
    assert certs.client.key in str(info.value) and "password" in str(info.value)
    assert "wrong" not in str(info.value)


@pytest.mark.parametrize(
    "block,words",
    [
        ({"cafile": "x"}, ["unknown tls option", "cafile", "ca_file"]),
        ({"key_file": "x"}, ["key_file needs a cert_file"]),
        ({"ca_file": "/nonexistent/ca.pem"}, ["ca_file", "/nonexistent/ca.pem", "missing or unreadable"]),
        ("yes", ["must be a mapping"]),
    ],
)
def test_a_broken_block_says_what_to_fix_and_is_not_retried(block, words):
    with pytest.raises(TlsConfigError) as info:
        tls.TlsOptions.parse(block).context()
    assert all(word in str(info.value) for word in words)
    assert info.value.retriable is False and isinstance(info.value, ValueError)


def test_a_ca_file_that_holds_no_certificate(certs):
    with pytest.raises(TlsConfigError) as info:
        tls.TlsOptions.parse({"ca_file": certs.client.key}).context()
    assert "cannot load tls ca_file" in str(info.value)


def test_server_hostname_is_the_name_checked_whatever_host_is_connected_to(certs):
    context = tls.TlsOptions.parse({"ca_file": certs.ca, "server_hostname": "broker.example"}).context()
    assert isinstance(context, tls.NamedHostContext) and context.server_hostname == "broker.example"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    assert context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").server_hostname == "broker.example"


@pytest.mark.parametrize(
    "profile,found",
    [
        ({}, None),
        ({"tls": None}, None),
        ({"tls": False}, None),
        ({"tls": True}, {}),
        ({"tls": {}}, {}),
        ({"tls": {"ca_file": "x"}}, {"ca_file": "x"}),
        ({"ssl": {"ca_file": "x"}}, {"ca_file": "x"}),
    ],
)
def test_the_block_of_a_profile(profile, found):
    assert tls.block(profile, aliases=("ssl",)) == found


def test_a_block_under_two_names_is_an_error():
    with pytest.raises(TlsConfigError) as info:
        tls.block({"tls": {}, "ssl": {}}, aliases=("ssl",))
    assert "both tls and ssl" in str(info.value)


def test_profiles_with_different_blocks_do_not_share_a_connection():
    assert tls.key({"tls": {"ca_file": "a"}}) != tls.key({"tls": {"ca_file": "b"}})
    assert tls.key({}) != tls.key({"tls": {}})
    assert tls.key({"tls": {"ca_file": "a", "password": "p"}}) == tls.key({"tls": {"password": "p", "ca_file": "a"}})


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


def _wrapped(cause: BaseException) -> Exception:
    """A client library's error with the handshake's error as its cause."""
    try:
        try:
            raise cause
        except OSError as e:
            raise ConnectionError(f"Error connecting: {e}") from e
    except ConnectionError as wrapper:
        return wrapper


def test_an_untrusted_certificate_is_a_refusal_saying_so():
    refusal = tls.refusal(_wrapped(_verify_error(20, "unable to get local issuer certificate")), "rediss://h:1/0")
    assert isinstance(refusal, TlsRefusedError) and refusal.retriable is False
    assert "rediss://h:1/0 was not trusted" in str(refusal) and "ca_file" in str(refusal)


@pytest.mark.parametrize("code", [62, 64])
def test_a_certificate_for_another_host_is_a_refusal_saying_so(code):
    refusal = tls.refusal(_wrapped(_verify_error(code, "Hostname mismatch")), "amqps://h:1/")
    assert "not for the host name" in str(refusal) and "server_hostname" in str(refusal)


def test_a_missing_client_certificate_is_a_refusal_saying_so():
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    refusal = tls.refusal(_wrapped(alert), "mqtts://h:1")
    assert "client certificate" in str(refusal) and "cert_file" in str(refusal)


def test_other_errors_are_no_refusal():
    assert tls.refusal(ConnectionRefusedError(111, "Connection refused"), "x") is None
    assert tls.refusal(None, "x") is None


def test_the_block_password_is_masked():
    masker = Masker()
    profile = {"connection": {"host": "h"}, "tls": {"cert_file": "/c.pem", "password": "key-secret"}}
    masker.learn(profile)
    assert masker.data(profile)["tls"] == {"cert_file": "/c.pem", "password": "***"}
    assert masker.text("cannot open with key-secret") == "cannot open with ***"


@pytest.mark.parametrize(
    "plugin,profile,option",
    [
        ("redis", {"tls": {"check_hostname": False}}, "tls check_hostname: false"),
        ("redis", {"connection": {"ssl": True, "ssl_check_hostname": False}}, "ssl_check_hostname: false"),
        ("redis", {"connection": {"ssl": True, "ssl_cert_reqs": "none"}}, "ssl_cert_reqs: none"),
        ("redis", {"connection": {"ssl": True}}, None),
        ("nats", {"tls": {"check_hostname": "false"}}, "tls check_hostname: false"),
        ("nats", {"tls": {}}, None),
        ("mqtt", {"connection": {"tls_params": {}, "tls_insecure": True}}, "tls_insecure: true"),
        ("mqtt", {"tls": {"check_hostname": False}}, "tls check_hostname: false"),
        ("pika", {"connection": {"url": "amqps://h/?no_verify_ssl=1"}}, "no_verify_ssl"),
        ("pika", {"tls": {"check_hostname": False}}, "tls check_hostname: false"),
        ("kafka", {"ssl": {"check_hostname": False}}, "tls check_hostname: false"),
        ("kafka", {"tls": {}}, None),
    ],
)
def test_each_plugin_names_what_turns_hostname_checking_off(hub, plugin, profile, option):
    found = hub.ingress[plugin].unchecked_hostname(ctx(profile))
    assert found == option or (option and option in found)


@pytest.mark.parametrize(
    "plugin,profile,clash",
    [
        ("redis", {"tls": {}, "connection": {"ssl_ca_certs": "ca.pem"}}, "ssl_ca_certs"),
        ("nats", {"tls": {}, "connection": {"tls": {"ca_file": "ca.pem"}}}, "tls"),
        ("mqtt", {"tls": {}, "connection": {"tls_params": {}}}, "tls_params"),
        ("pika", {"tls": {}, "connection": {"url": "amqps://h/?cafile=ca.pem"}}, "cafile"),
        ("kafka", {"tls": {}, "ssl": {}}, "both tls and ssl"),
        ("kafka", {"tls": {}, "connection": {"security_protocol": "PLAINTEXT"}}, "PLAINTEXT"),
    ],
)
async def test_tls_set_twice_is_an_error_naming_both(hub, plugin, profile, clash):
    profile = {"connection": {}, **profile}
    with pytest.raises(TlsConfigError) as info:
        await hub.ingress[plugin].open(ctx(profile))
    assert clash in str(info.value)


def test_redis_checks_host_names_with_its_own_ssl_options_on_every_version(hub):
    from evbus.ingress.redis import _client

    for kwargs in ({"host": "127.0.0.1", "ssl": True}, {"url": "rediss://127.0.0.1:6380/0"}):
        client = _client(kwargs, None)
        assert client.connection_pool.connection_kwargs["ssl_check_hostname"] is True
    client = _client({"host": "127.0.0.1", "ssl": True, "ssl_check_hostname": False}, None)
    assert client.connection_pool.connection_kwargs["ssl_check_hostname"] is False


def test_redis_connections_take_the_context_of_the_block(hub, certs):
    from evbus.ingress.redis import _client
    from evbus.ingress.redis import TlsConnection

    for kwargs in ({"host": "127.0.0.1", "port": 6380}, {"url": "redis://127.0.0.1:6380/0"}):
        pool = _client(kwargs, {"ca_file": certs.ca}).connection_pool
        connection = pool.make_connection()
        assert isinstance(connection, TlsConnection)
        arguments = connection._connection_arguments()
        assert arguments["ssl"] is pool.connection_kwargs["tls_context"]
        assert (arguments["host"], arguments["port"]) == ("127.0.0.1", 6380)
    with pytest.raises(TlsConfigError):
        _client({"unix_socket_path": "/tmp/redis.sock"}, {})


def test_kafka_takes_ssl_as_an_alias_and_security_protocol_ssl_alone(hub, certs):
    from evbus.ingress.kafka import _producer_kwargs

    kwargs = _producer_kwargs(hub, ctx({"ssl": {"ca_file": certs.ca}, "connection": {}}))
    assert kwargs["security_protocol"] == "SSL" and kwargs["ssl_context"].check_hostname is True
    kwargs = _producer_kwargs(hub, ctx({"tls": {}, "connection": {"security_protocol": "SASL_SSL"}}))
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    kwargs = _producer_kwargs(hub, ctx({"connection": {"security_protocol": "SSL"}}))
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED and kwargs["ssl_context"].check_hostname
    assert "ssl_context" not in _producer_kwargs(hub, ctx({"connection": {}}))


@pytest.mark.parametrize(
    "plugin,profile,address",
    [
        ("redis", {"tls": {}, "connection": {"host": "h", "port": 1}}, "rediss://h:1/0"),
        ("redis", {"tls": {}, "connection": {"url": "redis://h:1/0"}}, "rediss://h:1/0"),
        ("nats", {"tls": {}, "connection": {"servers": "nats://h:1"}}, "tls://h:1"),
        ("mqtt", {"connection": {"hostname": "h", "port": 1, "tls_params": {}}}, "mqtts://h:1"),
        ("mqtt", {"tls": {}, "connection": {"hostname": "h", "port": 1}}, "mqtts://h:1"),
        ("pika", {"tls": {}, "connection": {"url": "amqp://u:p@h/"}}, "amqps://h:5671/"),
        ("pika", {"tls": {}, "connection": {"url": "amqp://u:p@h:1/"}}, "amqps://h:1/"),
        ("pika", {"connection": {"url": "amqp://u:p@h/"}}, "amqp://h:5672/"),
    ],
)
def test_addresses_say_tls(hub, plugin, profile, address):
    assert hub.ingress[plugin].describe(ctx(profile)) == address
