"""What the manufacturer CA issues to a board whose key the station believes resident.

- The IDevID: IEEE 802.1AR (hsm/x509.issue_idevid: subject serialNumber,
  notAfter 99991231235959Z, keyUsage digitalSignature, id-pe-masa-url) with a
  hardwareModuleName (RFC 4108) naming the module that holds the key. The
  subject is the CA's own (from the serial number the board reported), never
  the one in the board's CSR.
- For a TPM board, the IAK certificate as TCG "TPM 2.0 Keys for Device
  Identity and Attestation" describes it: extendedKeyUsage
  tcg-kp-AIKCertificate, the policies that say what the CA verified
  (tcg-cap-verifiedTPMResidency, -Fixed, -Restricted), the same
  hardwareModuleName.

A TPM's hardwareModuleName is the TCG's: hwType tcg-sv-tpm20 (2.23.133.1.2)
and hwSerialNum "<TPM manufacturer>:<EK certificate's authorityKeyIdentifier,
hex>:<EK certificate serial, hex>" from the EK certificate (or, when that
names no TPM manufacturer, the hex SHA-256 of the EK public key).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

from pledgeforge.hsm.x509 import (IDEVID_NOT_AFTER, hardware_module_name, issue_certificate,
                                  issue_idevid)

TCG_TPM20 = "2.23.133.1.2"
TCG_AT_TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TCG_KP_AIK_CERTIFICATE = ObjectIdentifier("2.23.133.8.3")
TCG_CAP_VERIFIED_TPM_RESIDENCY = ObjectIdentifier("2.23.133.11.1.1")
TCG_CAP_VERIFIED_TPM_FIXED = ObjectIdentifier("2.23.133.11.1.2")
TCG_CAP_VERIFIED_TPM_RESTRICTED = ObjectIdentifier("2.23.133.11.1.3")


def _tpm_manufacturer(ek_certificate: x509.Certificate) -> str | None:
    """The TPM manufacturer code the EK certificate's subjectAltName names ("id:00001014"
    gives "00001014")."""
    try:
        names = ek_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for directory in names.get_values_for_type(x509.DirectoryName):
        for attribute in directory.get_attributes_for_oid(TCG_AT_TPM_MANUFACTURER):
            value = str(attribute.value)
            return value[3:] if value.startswith("id:") else value
    return None


def tpm_hardware_serial(ek_certificate: x509.Certificate) -> bytes:
    """The TCG hwSerialNum of the TPM the EK certificate belongs to."""
    manufacturer = _tpm_manufacturer(ek_certificate)
    try:
        aki = ek_certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    if manufacturer is None or aki is None:
        spki = ek_certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest().encode()
    return f"{manufacturer}:{aki.hex()}:{ek_certificate.serial_number:x}".encode()


def board_idevid(ca_signer, ca_certificate: x509.Certificate, public_key, serial: str, *,
                 masa_url: str, hardware_module: tuple[str, bytes] | None) -> x509.Certificate:
    return issue_idevid(ca_signer, ca_certificate, public_key, serial, masa_url=masa_url,
                        hardware_module=hardware_module)


def iak_certificate(ca_signer, ca_certificate: x509.Certificate, public_key, serial: str, *,
                    hardware_module: tuple[str, bytes]) -> x509.Certificate:
    policies = x509.CertificatePolicies([
        x509.PolicyInformation(oid, None) for oid in (TCG_CAP_VERIFIED_TPM_RESIDENCY,
                                                       TCG_CAP_VERIFIED_TPM_FIXED,
                                                       TCG_CAP_VERIFIED_TPM_RESTRICTED)])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"IAK {serial}"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)])
    return issue_certificate(ca_signer, ca_certificate, public_key, subject,
                             not_after=IDEVID_NOT_AFTER,
                             extended_key_usage=[TCG_KP_AIK_CERTIFICATE],
                             other_names=[hardware_module_name(*hardware_module)],
                             extra_extensions=[(policies, False)])


__all__ = ["TCG_TPM20", "tpm_hardware_serial", "board_idevid", "iak_certificate"]
