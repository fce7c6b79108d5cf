"""The VOMS attribute certificate as a value, and the signature algorithms VOMS uses."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes

SIG_HASHES: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.1.1.5": hashes.SHA1(),  # noqa: S303 - old VOMS servers signed ACs with SHA-1
    "1.2.840.113549.1.1.11": hashes.SHA256(),
    "1.2.840.113549.1.1.12": hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
}
SIG_OIDS = {
    "sha1": "1.2.840.113549.1.1.5",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
HOST_PORT = re.compile(r"(?P<host>[^:/\s]+):(?P<port>\d{1,5})\Z")


@dataclass(frozen=True)
class GenericAttribute:
    name: str
    value: str
    qualifier: str = ""


@dataclass(frozen=True)
class AttributeCertificate:
    """A parsed VOMS AC. Parsing checks structure only; `verify_attribute_certificate` trusts."""

    der: bytes
    vo: str
    uri: str
    fqans: tuple[str, ...]
    generic_attributes: tuple[GenericAttribute, ...]
    issuer: x509.Name
    serial_number: int
    holder_issuer: x509.Name
    holder_serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    targets: tuple[str, ...]
    aa_chain: tuple[x509.Certificate, ...]
    extensions: tuple[tuple[str, bool], ...]
    signature_algorithm: str
    tbs_der: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def host(self) -> str:
        return self.uri.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def describe(self) -> str:
        return f"VOMS AC for VO {self.vo} from {self.uri} (serial {self.serial_number})"
