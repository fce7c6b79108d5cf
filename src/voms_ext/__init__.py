"""voms_ext: grid credentials as values.

RFC 3820 proxy certificates, VOMS attribute certificates and RFC 3820 path
validation over `cryptography` and `pyasn1`; no network, no database.
"""

from .ac import (
    AttributeCertificate,
    AttributeCertificateBuilder,
    GenericAttribute,
    parse_attribute_certificate,
    parse_voms_extension,
    verify_attribute_certificate,
)
from .errors import (
    AttributeCertificateError,
    ChainError,
    CredentialFileError,
    DecodeError,
    DistinguishedNameError,
    FqanError,
    ProxyError,
    TrustStoreError,
    VomsExtError,
)
from .files import (
    Credential,
    credential_to_pem,
    load_credential_file,
    parse_credential_pem,
    write_credential_file,
)
from .fqan import Fqan, fqan_matches, normalise_fqan, parse_fqan
from .names import dn_to_slash, slash_to_name, subject_hash
from .proxy import ProxyBuilder, ProxyCertInfo, ProxyType, classify
from .trust import TrustStore
from .validate import ValidationResult, VomsAttributes, validate_chain

__all__ = [
    "AttributeCertificate",
    "AttributeCertificateBuilder",
    "AttributeCertificateError",
    "ChainError",
    "Credential",
    "CredentialFileError",
    "DecodeError",
    "DistinguishedNameError",
    "Fqan",
    "FqanError",
    "GenericAttribute",
    "ProxyBuilder",
    "ProxyCertInfo",
    "ProxyError",
    "ProxyType",
    "TrustStore",
    "TrustStoreError",
    "ValidationResult",
    "VomsAttributes",
    "VomsExtError",
    "classify",
    "credential_to_pem",
    "dn_to_slash",
    "fqan_matches",
    "load_credential_file",
    "normalise_fqan",
    "parse_attribute_certificate",
    "parse_credential_pem",
    "parse_fqan",
    "parse_voms_extension",
    "slash_to_name",
    "subject_hash",
    "validate_chain",
    "verify_attribute_certificate",
    "write_credential_file",
]
