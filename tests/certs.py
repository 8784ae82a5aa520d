"""
A throwaway certificate authority for the TLS tests: a private CA, server
certificates (for localhost and 127.0.0.1, or for another host name only)
and a client certificate whose key is encrypted with a password.
"""
import dataclasses
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

# The password of the client certificate's key
CLIENT_KEY_PASSWORD = "client-key-secret"
# The only host name of the wrong host's certificate
WRONG_HOST = "wronghost.example"


@dataclasses.dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: str
    key: str


@dataclasses.dataclass(frozen=True)
class Certs:
    """The files of one CA and the certificates it signed."""

    ca: str
    server: Pair  # for localhost and 127.0.0.1
    wrong_host: Pair  # for wronghost.example only
    client: Pair  # a client certificate; its key is encrypted with CLIENT_KEY_PASSWORD


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: pathlib.Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _key_pem(key, password: str | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class Authority:
    """A CA that signs certificates into a directory."""

    def __init__(self, directory: pathlib.Path, name: str):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.file = _write(directory / f"{name}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, stem: str, hosts: list[str], client: bool = False, password: str | None = None) -> Pair:
        """
        :param stem: The files' name
        :param hosts: Host names and IP addresses of the certificate (none for a client's)
        :param client: A client certificate (else a server's)
        :param password: Encrypt the key with it
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0] if hosts else stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Pair(
            cert=_write(self.directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.directory / f"{stem}.key", _key_pem(key, password)),
        )


def make(directory: pathlib.Path) -> Certs:
    """Make a CA and every certificate the TLS tests use, in ``directory``."""
    ca = Authority(directory, "evbus-test-ca")
    return Certs(
        ca=ca.file,
        server=ca.sign("server", ["localhost", "127.0.0.1"]),
        wrong_host=ca.sign("wronghost", [WRONG_HOST]),
        client=ca.sign("client", [], client=True, password=CLIENT_KEY_PASSWORD),
    )
