"""Secrets are masked in text and data."""
from evbus.mask import Masker


def test_masks_learned_secrets_and_url_passwords():
    masker = Masker()
    masker.learn({"connection": {"password": "hunter2", "user": "bob", "sasl_plain_password": "s3cr3t"}})
    masker.learn({"token": "tok-123", "key": "message-key", "routing_key": "rk"})
    text = masker.text("login bob:hunter2 failed, sasl s3cr3t, tok-123 at amqp://bob:other@host:5672/ key message-key")
    assert "hunter2" not in text and "s3cr3t" not in text and "tok-123" not in text and "other" not in text
    assert "bob" in text and "message-key" in text and "amqp://bob:***@host:5672/" in text


def test_masks_data_by_key():
    masker = Masker()
    data = masker.data(
        {"connection": {"url": "amqp://u:pw@h/", "password": "x", "api_key": "k", "ssl_password": "p"}, "key": "k2"}
    )
    assert data == {"connection": {"url": "amqp://u:***@h/", "password": "***", "api_key": "***", "ssl_password": "***"}, "key": "k2"}


def test_learns_url_passwords_from_profiles():
    masker = Masker()
    masker.learn({"connection": {"url": "amqp://guest:verysecret@127.0.0.1/"}})
    assert masker.text("failed with verysecret") == "failed with ***"


def test_exception_text():
    masker = Masker()
    masker.learn("acct-key-value")
    assert masker.exception(ValueError("bad acct-key-value")) == "ValueError: bad ***"


def test_url_user_information_is_masked_to_its_last_at():
    """A password with "@" or "/" in it (clients take it as it is), and a token alone (NATS)."""
    masker = Masker()
    cases = {
        "amqp://guest:Zsec@ret4@127.0.0.1:5699/": "amqp://guest:***@127.0.0.1:5699/",
        "redis://:pa/ss9@127.0.0.1:6379/0": "redis://:***@127.0.0.1:6379/0",
        "nats://Ztok9secret@127.0.0.1:4222": "nats://***@127.0.0.1:4222",
        "failed: amqp://a:b@h/ and nats://x:y@h2, retrying": "failed: amqp://a:***@h/ and nats://x:***@h2, retrying",
        # no user information: left as it is
        "http://host/path?email=a@b": "http://host/path?email=a@b",
        "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
    }
    for text, masked in cases.items():
        assert masker.text(text) == masked


def test_secrets_of_urls_in_profiles_are_learned_whole():
    """A password with a space, and a NATS token, learned from the profile: masked wherever they appear."""
    masker = Masker()
    masker.learn(
        {
            "connection": {"url": "amqp://guest:pa ss9@127.0.0.1/"},
            "servers": ["nats://Ztok9secret@127.0.0.1:4222"],
        }
    )
    assert masker.text("login failed (pa ss9), token Ztok9secret") == "login failed (***), token ***"
    assert masker.data({"url": "amqp://guest:pa ss9@127.0.0.1/"}) == {"url": "amqp://guest:***@127.0.0.1/"}
    # a user name alone is no secret to learn: short words it appears in stay as they are
    masker.learn({"url": "amqp://guest@127.0.0.1/"})
    assert masker.text("guest") == "guest"


def test_secrets_in_url_queries_are_masked_and_learned():
    """amqp://host/?password=..., redis://host?password=...: the value is masked wherever it appears."""
    masker = Masker()
    masker.learn({"connection": {"url": "amqp://127.0.0.1:5672/?heartbeat=5&password=q-s3cret"}})
    assert masker.text("cannot connect to amqp://127.0.0.1:5672/?heartbeat=5&password=q-s3cret: refused") == (
        "cannot connect to amqp://127.0.0.1:5672/?heartbeat=5&password=***: refused"
    )
    assert masker.text("login q-s3cret refused") == "login *** refused"
    assert Masker().text("redis://h/0?db=1;sasl_password=pw#x ?page=2&Token=t") == (
        "redis://h/0?db=1;sasl_password=***#x ?page=2&Token=***"
    )
    assert Masker().data({"url": "nats://h:4222?token=abc&name=x"}) == {"url": "nats://h:4222?token=***&name=x"}
