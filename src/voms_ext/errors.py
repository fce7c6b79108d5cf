"""One exception hierarchy for everything voms_ext rejects.

Every message names the object (usually a certificate subject) and the
reason, so that a person reading a log line can act on it.
"""

from __future__ import annotations


class VomsExtError(Exception):
    """Base class: anything voms_ext refuses to parse, build or trust."""


class DecodeError(VomsExtError):
    """Bytes that are not the DER, PEM or text they claim to be."""


class NameError_(VomsExtError):
    """A distinguished name that cannot be parsed or used."""


class ProxyError(VomsExtError):
    """A proxy certificate that breaks RFC 3820 (or legacy Globus) rules."""


class ChainError(VomsExtError):
    """A certificate chain that does not validate to a trusted anchor."""


class AttributeCertificateError(VomsExtError):
    """A VOMS attribute certificate that is malformed or does not verify."""


class FqanError(VomsExtError):
    """A Fully Qualified Attribute Name that is not well formed."""


class TrustStoreError(VomsExtError):
    """A trust directory (X509_CERT_DIR / X509_VOMS_DIR) that cannot be used."""


class CredentialFileError(VomsExtError):
    """A grid credential file that cannot be read or written safely."""


DistinguishedNameError = NameError_
