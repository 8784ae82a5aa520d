"""
TLS for the broker plugins: one ``tls`` block, the same in every broker
profile, turned into the ``ssl.SSLContext`` that each plugin hands its client
library.

.. code-block:: yaml

    tls:                              # {} (or true): TLS with the defaults
      ca_file: /path/ca.pem           # the CA of the server's certificate; else the system's trust store
      cert_file: /path/client.pem     # a client certificate, for servers that require one (mutual TLS)
      key_file: /path/client.key      # its key, when cert_file does not hold it
      password: secret                # the key's password (masked like every secret)
      check_hostname: true            # the default; false takes any certificate the CA signed (a warning)
      server_hostname: broker.example # the name the server's certificate must be for, when it is not
                                      # the host connected to (a broker reached by IP address, say)

The server's certificate is always verified: against ``ca_file``, or the
system's trust store. Its host name is checked unless ``check_hostname:
false`` says otherwise; the plugins log that choice as a warning, once per
profile, when the bus starts.

A handshake that fails for a reason a retry cannot mend (a certificate not
trusted or not for the host name, a client certificate missing or refused)
is a :class:`~evbus.exc.TlsRefusedError` that says what to fix: its events
are dead-lettered after one attempt.
"""
import asyncio
import dataclasses
import os
import ssl
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

from evbus.exc import TlsConfigError
from evbus.exc import TlsRefusedError

KEYS = ("ca_file", "cert_file", "key_file", "password", "check_hostname", "server_hostname")

# OpenSSL's verify codes of a certificate that is not for the host name (or IP address) connected to
NAME_MISMATCH = {62, 64}
# Alerts a server sends when it requires a client certificate and got none, or none it trusts
CLIENT_CERTIFICATE_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_UNKNOWN_CA",
}
# Seconds a probe waits after the handshake for an alert that refuses the client's certificate
ALERT_WAIT = 0.5


def flag(value: Any, default: bool) -> bool:
    """
    :param value: A boolean of a profile: true/false, yes/no, on/off, 1/0, or empty
    :param default: What an empty value means
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("false", "no", "off", "0")


@dataclasses.dataclass(frozen=True, slots=True)
class TlsOptions:
    """A profile's ``tls`` block, checked."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    check_hostname: bool = True
    server_hostname: str | None = None

    @classmethod
    def parse(cls, block: Mapping | bool | None) -> "TlsOptions":
        """
        :param block: The ``tls`` block: a mapping of :data:`KEYS`, or true for the defaults
        :raises TlsConfigError: for an option it does not know, or a key_file without a cert_file
        """
        if block is True or block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise TlsConfigError(f"the tls block must be a mapping of {', '.join(KEYS)}, not {type(block).__name__}")
        unknown = sorted(str(key) for key in block if key not in KEYS)
        if unknown:
            raise TlsConfigError(f"unknown tls option(s) {', '.join(unknown)}: the options are {', '.join(KEYS)}")

        def text(name: str) -> str | None:
            value = block.get(name)
            return None if value is None or value == "" else str(value)

        options = cls(
            ca_file=text("ca_file"),
            cert_file=text("cert_file"),
            key_file=text("key_file"),
            password=text("password"),
            check_hostname=flag(block.get("check_hostname"), True),
            server_hostname=text("server_hostname"),
        )
        if options.key_file and not options.cert_file:
            raise TlsConfigError("tls key_file needs a cert_file")
        return options

    def context(self) -> ssl.SSLContext:
        """
        Make the SSL context: the server's certificate verified (against
        ``ca_file``, else the system's trust store), its host name checked
        unless ``check_hostname`` is false, the client certificate loaded.

        :raises TlsConfigError: naming a file that is missing, unreadable or
            not what it should be, or a key its password does not open
        """
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise TlsConfigError(f"tls {name} '{path}' is missing or unreadable")
        context = (NamedHostContext if self.server_hostname else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
        if self.server_hostname:
            context.server_hostname = self.server_hostname
        try:
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            else:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (ssl.SSLError, OSError) as e:
            raise TlsConfigError(f"cannot load tls ca_file '{self.ca_file}': {e}") from None
        if self.cert_file:
            files = f"tls cert_file '{self.cert_file}'" + (f" and key_file '{self.key_file}'" if self.key_file else "")

            def no_password():  # instead of OpenSSL's prompt on the terminal
                raise TlsConfigError(f"the key of {files} is encrypted: name its password in the tls block")

            try:
                context.load_cert_chain(self.cert_file, keyfile=self.key_file, password=self.password or no_password)
            except (ssl.SSLError, OSError) as e:
                hint = " (is the password right?)" if self.password else ""
                raise TlsConfigError(f"cannot load {files}: {e}{hint}") from None
        # PROTOCOL_TLS_CLIENT verifies the certificate and checks the host name; only this may turn that off
        context.check_hostname = self.check_hostname
        return context


class NamedHostContext(ssl.SSLContext):
    """
    An SSL context that checks the server's certificate against one host
    name (and sends it as SNI), whatever host the client library connects
    to: the ``server_hostname`` of a profile, for client libraries that take
    none of their own. asyncio (and uvloop) call ``wrap_bio``, paho-mqtt
    calls ``wrap_socket``.
    """

    server_hostname: str

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, suppress_ragged_eofs=True,
                    server_hostname=None, session=None):
        return super().wrap_socket(
            sock, server_side, do_handshake_on_connect, suppress_ragged_eofs, self.server_hostname, session
        )

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, self.server_hostname, session)


def block(acct: Mapping, aliases: tuple[str, ...] = ()) -> Mapping | None:
    """
    The ``tls`` block of a profile (or of an alias, as Kafka's ``ssl``).

    :param acct: The profile
    :param aliases: Other names of the block
    :return: The block, ``{}`` for ``tls: true`` or ``tls: {}``; None when
        the profile has none (or says ``tls: false``)
    :raises TlsConfigError: when the profile has the block under two names
    """
    found = [name for name in ("tls", *aliases) if acct.get(name) not in (None, False)]
    if not found:
        return None
    if len(found) > 1:
        raise TlsConfigError(f"the profile has both {' and '.join(found)}: keep one (they mean the same)")
    value = acct[found[0]]
    return {} if value is True else value


def key(acct: Mapping, aliases: tuple[str, ...] = ()) -> str:
    """
    :return: The profile's ``tls`` block as text, for the key of a shared
        connection: profiles with different blocks get connections of their own
    """
    found = {name: acct.get(name) for name in ("tls", *aliases) if acct.get(name) is not None}
    return repr(sorted((name, sorted(dict(value).items()) if isinstance(value, Mapping) else value)
                       for name, value in found.items()))


def unchecked(acct: Mapping, aliases: tuple[str, ...] = ()) -> str | None:
    """
    :return: ``tls check_hostname: false`` when the profile's ``tls`` block
        turns the checking of host names off, else None
    """
    try:
        found = block(acct, aliases)
    except TlsConfigError:
        return None
    if isinstance(found, Mapping) and not flag(found.get("check_hostname"), True):
        return "tls check_hostname: false"
    return None


def conflict(block_found: Mapping | None, connection: Mapping, native: tuple[str, ...], prefix: str = ""):
    """
    A profile that sets TLS twice: in its ``tls`` block and in the client
    library's own options of its ``connection``.

    :param block_found: The profile's ``tls`` block, or None
    :param connection: The profile's ``connection``
    :param native: The client library's TLS options
    :param prefix: Options whose name starts so are the library's TLS options too
    :raises TlsConfigError: naming the options of the connection that the block would override
    """
    if block_found is None:
        return
    clashing = sorted(
        str(name) for name in connection if name in native or (prefix and str(name).startswith(prefix))
    )
    if clashing:
        raise TlsConfigError(
            f"the profile sets TLS both in its tls block and in connection {', '.join(clashing)}: "
            f"keep one (the tls block takes ca_file, cert_file, key_file, password, check_hostname, server_hostname)"
        )


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """An error, its causes and contexts, and the errors in its arguments, each once."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen or len(seen) > 50:
            continue
        seen.add(id(current))
        yield current
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        todo.extend((current.__context__, current.__cause__))


def refusal(error: BaseException | None, where: str) -> TlsRefusedError | None:
    """
    What a failed TLS handshake means, when a retry cannot mend it.

    :param error: The error of a client library (its causes are searched too)
    :param where: The server, for the message
    :return: The refusal, saying what to fix; None when ``error`` is not one
    """
    for cause in _chain(error):
        if isinstance(cause, TlsRefusedError):
            return cause
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or str(cause)
            if cause.verify_code in NAME_MISMATCH:
                return TlsRefusedError(
                    f"the TLS certificate of {where} is not for the host name connected to ({reason}): "
                    f"connect by a name the certificate is for, or name it in the profile's tls server_hostname"
                )
            return TlsRefusedError(
                f"the TLS certificate of {where} was not trusted ({reason}): "
                f"name the CA that signed it in the profile's tls ca_file"
            )
        if isinstance(cause, ssl.SSLError) and cause.reason in CLIENT_CERTIFICATE_ALERTS:
            return TlsRefusedError(
                f"{where} refused the TLS connection for want of a client certificate it trusts "
                f"({cause.reason}): name one in the profile's tls cert_file and key_file"
            )
    return None


async def probe(host: str, port: int, context: ssl.SSLContext, timeout: float = 5.0) -> BaseException | None:
    """
    Why TLS connections to a server fail, for a client library that does not
    say (aiokafka logs the handshake's error and raises "Unable to
    bootstrap"): one connection that does the handshake, then waits a moment
    for an alert (a TLS 1.3 server refuses a client certificate after the
    handshake). Only for protocols that start with the handshake.

    :param host: The server's host
    :param port: Its port
    :param context: The SSL context of the client library's connections
    :param timeout: Seconds for the whole probe
    :return: The error of the connection, or None when it went through
    """
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                async with asyncio.timeout(ALERT_WAIT):
                    await reader.read(1)
            except TimeoutError:  # no alert: the server waits for the client to speak
                pass
    except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
        return e
    finally:
        if writer is not None:
            writer.transport.abort()
    return None
