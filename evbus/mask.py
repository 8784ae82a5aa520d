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

# scheme://user:password@host -> scheme://user:***@host
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)(?=@)")


def is_secret_key(key: Any) -> bool:
    """
    :param key: A mapping key
    :return: True if values under this key are secrets
    """
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


class Masker:
    """
    Replaces known secret values and URL passwords with ``***``.
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
            match = URL_PASSWORD.search(data)
            if match:
                self._add(match.group("pw"))

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
        text = URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
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
