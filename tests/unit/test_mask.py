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
