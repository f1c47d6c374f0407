"""Errors raised by key stores, CMS and X.509 code.

Key store errors are environment failures (the token, TPM or PIN is not as the
key URI expects), except a malformed URI, which is a usage error; CMS,
certificate and voucher errors are verification failures (see pledgeforge/errors.py).
"""

from pledgeforge.errors import EnvironmentFailure, UsageError, VerificationFailure


class KeyStoreError(EnvironmentFailure):
    """A key store could not do what was asked."""


class KeyUriError(KeyStoreError, UsageError):
    """A key URI is malformed or names something unsupported."""


class TokenNotFoundError(KeyStoreError):
    """No PKCS#11 token carries the requested label."""


class ModuleNotConfiguredError(TokenNotFoundError):
    """No token found, and the module ran on its default configuration because the key URI
    gave it none (SoftHSM without SOFTHSM2_CONF): most likely the cause."""


class PinError(KeyStoreError):
    """The PIN was wrong, locked, or could not be read."""


class KeyNotFoundError(KeyStoreError):
    """The key store has no key under the requested name."""


class KeyExistsError(KeyStoreError):
    """A key already exists where a new one was to be generated."""


class UnsupportedAlgorithmError(KeyStoreError):
    """The algorithm is unknown or the key store cannot do it."""


class ModuleHostError(KeyStoreError):
    """The process serving a PKCS#11 module died or hung; the next call starts a new one."""


class TpmUnreachableError(KeyStoreError):
    """The TPM (or its TCTI) could not be reached."""


class HandleInUseError(KeyExistsError):
    """A TPM persistent handle is already occupied."""


class CmsError(VerificationFailure):
    """Base for CMS SignedData failures; each cause has its own subclass."""


class MalformedCmsError(CmsError):
    """The input is not a well-formed CMS SignedData."""


class UnexpectedContentTypeError(CmsError):
    """The encapsulated content type is not one we accept."""


class DigestMismatchError(CmsError):
    """The messageDigest attribute does not match the content."""


class BadSignatureError(CmsError):
    """The signature does not verify with the signer's public key."""


class UntrustedSignerError(CmsError):
    """The signer's certificate does not chain to a trust anchor."""


class ExpiredCertificateError(UntrustedSignerError):
    """A certificate in the signer's chain is outside its validity period."""


class CertificateError(VerificationFailure):
    """A certificate or CSR is malformed or fails a check."""


class VoucherError(VerificationFailure):
    """A voucher or voucher-request is malformed or violates the YANG model."""
