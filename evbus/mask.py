"""
Secrets stay secret: masking of passwords, keys and tokens in text and data.

A :class:`Masker` learns secret values from profiles (values under keys that
name a secret) and replaces them, and the password part of any URL, in every
text evbus logs, raises or hands to the error callback.
"""
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# Keys whose values are secrets.  "key" alone is Kafka's message key and
# "key_file" a path: neither is a secret, so neither is listed.
SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?$|secret|token|api_?key|private_?key|access_?key|"
    r"acct_key|credential|^auth$|authorization|^sasl_plain_password$|^ssl_password$",
    re.IGNORECASE,
)

# scheme://user:password@host -> scheme://user:***@host, scheme://token@host -> scheme://***@host.
# The user information runs to the last "@" of the word: clients take a password with "@" or
# "/" in it as it is (an URL in data, a value of its own, may hold spaces too: to its last "@")
URL_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>\S+)@")
URL_VALUE = re.compile(r"\s*[a-zA-Z][a-zA-Z0-9+.\-]*://(?P<userinfo>.+)@", re.DOTALL)
# A secret in an URL's query: ?password=..., &sasl_password=..., ;token=... (the key one of SECRET_KEY's)
# (a ":" that ends the value before a space or the end is the text's: "...?password=x: refused")
URL_QUERY = re.compile(r"(?P<head>[?&;](?P<key>[A-Za-z0-9_.\-]+)=)(?P<value>[^&;#\s]+?)(?=[&;#\s]|:\s|:$|$)")
# A token alone (no ":") is learned from profiles when it is at least this long: a user name
# alone ("amqp://guest@host") must not mask every short word it appears in
TOKEN_LENGTH = 8


def url_secret(userinfo: str) -> str | None:
    """
    :param userinfo: What an URL holds between ``scheme://`` and the last "@"
    :return: Its secret: the password (after the first ":"), the token when it
        has no ":", or None when it is no user information (a path with an "@")
    """
    user, colon, password = userinfo.partition(":")
    if any(c in user for c in "/?#"):
        return None
    return password if colon else user


def _mask_userinfo(match: re.Match) -> str:
    userinfo = match.group("userinfo")
    secret = url_secret(userinfo)
    if not secret:
        return match.group(0)
    return f"{match.group('head')}{userinfo[: len(userinfo) - len(secret)]}{MASK}@"


def _mask_query(match: re.Match) -> str:
    return match.group("head") + MASK if is_secret_key(match.group("key")) else match.group(0)


def query_secrets(text: str) -> list[str]:
    """:return: The values of the secrets in ``text``'s URL queries (``?password=...``)"""
    return [m.group("value") for m in URL_QUERY.finditer(text) if is_secret_key(m.group("key"))]


def is_secret_key(key: Any) -> bool:
    """
    :param key: A mapping key
    :return: True if values under this key are secrets
    """
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


class Masker:
    """
    Replaces known secret values, URL passwords and the secrets of URL queries
    (``?password=...``) with ``***``.
    """

    def __init__(self):
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None

    def learn(self, data: Any):
        """
        Remember every secret value found in ``data`` (nested mappings and lists).

        :param data: Profile data, or a secret string itself
        """
        if isinstance(data, str):
            self._add(data)
        else:
            self._walk(data)

    def _walk(self, data: Any):
        if isinstance(data, Mapping):
            for key, value in data.items():
                if is_secret_key(key) and isinstance(value, (str, bytes, int)) and value not in ("", None):
                    self._add(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
                else:
                    self._walk(value)
        elif isinstance(data, (list, tuple)):
            for item in data:
                self._walk(item)
        elif isinstance(data, str):
            for secret in query_secrets(data):
                self._add(secret)
            match = URL_VALUE.match(data)
            if match:
                userinfo = match.group("userinfo")
                secret = url_secret(userinfo)
                if secret and (":" in userinfo or len(secret) >= TOKEN_LENGTH):
                    self._add(secret)

    def _add(self, secret: str):
        if secret and secret not in self._secrets:
            self._secrets.add(secret)
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def text(self, text: Any) -> str:
        """
        :param text: Any value; it is turned into a string
        :return: The string with every known secret and URL password masked
        """
        text = str(text)
        text = URL_USERINFO.sub(_mask_userinfo, text)
        text = URL_QUERY.sub(_mask_query, text)
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return text

    def data(self, data: Any) -> Any:
        """
        :param data: Nested mappings, lists and scalars
        :return: A copy with values under secret keys and known secrets masked
        """
        if isinstance(data, Mapping):
            return {
                key: (MASK if is_secret_key(key) and value not in (None, "") else self.data(value))
                for key, value in data.items()
            }
        if isinstance(data, (list, tuple)):
            return [self.data(item) for item in data]
        if isinstance(data, str):
            return self.text(data)
        return data

    def exception(self, error: BaseException) -> str:
        """
        :param error: An exception
        :return: ``Type: message`` with secrets masked
        """
        return self.text(f"{type(error).__name__}: {error}")
