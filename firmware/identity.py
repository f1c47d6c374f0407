"""A pledge's identity: what it is born with, in memory and in its stored form.

One type for every place a pledge lives: the emulated board keeps it in its
flash, the lab keeps it in the pledge's directory (identity.json beside
idevid.crt), and the pledge driver runs from it. The stored form is a JSON
object of PEM texts and URIs (`to_json` / `from_json`); certificates are
parsed when first used, so a stored identity is kept and shown as it is even
where it does not parse.

    {"idevid_pem": "...", "key_uri": "tpm:handle=0x81020000?tcti=...",
     "trust_anchors_pem": ["..."], "masa_anchors_pem": ["..."],
     "cloud_registrar_url": "https://...", ...}

A board's stored identity carries the cloud registrar's URL its factory
installed; the board's configuration (`registrar.url`, which its user may
change) overrides it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.x509 import serial_number_of, to_pem

#: the stored identity in a pledge's directory
IDENTITY_FILE = "identity.json"


class IdentityError(PledgeforgeError):
    """A stored pledge identity cannot be read."""


@dataclass(frozen=True)
class PledgeIdentity:
    """What a pledge is born with: its IDevID (key in hardware) and built-in trust."""

    #: where the IDevID private key lives (pkcs11: or tpm: URI; a PIN only by pin-source)
    idevid_key_uri: str
    idevid_pem: str
    #: anchors that authenticate the cloud registrar's TLS server
    builtin_anchors_pem: tuple[str, ...] = ()
    #: anchors that the MASA's voucher signature must chain to
    masa_anchors_pem: tuple[str, ...] = ()
    cloud_registrar_url: str | None = None
    #: intermediate certificates sent with the IDevID
    idevid_chain_pem: tuple[str, ...] = ()
    #: where the LDevID key's two slots are (LdevidSlots.beside: object=L gives labels L-a and L-b,
    #: handle=H the handles H and H+1); default: labels ldevid-a/-b or handles 0x81000100/1 of
    #: the IDevID's key store
    ldevid_key_uri: str | None = None
    #: environment variable holding the PIN, for keys whose URI names none
    pin_env: str | None = None

    @classmethod
    def from_certificates(cls, idevid_key_uri: str, idevid: x509.Certificate, *,
                          builtin_anchors=(), masa_anchors=(), idevid_chain=(),
                          **fields) -> "PledgeIdentity":
        def pems(certs) -> tuple[str, ...]:
            return tuple(to_pem(c).decode() for c in certs)

        return cls(idevid_key_uri=str(idevid_key_uri), idevid_pem=to_pem(idevid).decode(),
                   builtin_anchors_pem=pems(builtin_anchors), masa_anchors_pem=pems(masa_anchors),
                   idevid_chain_pem=pems(idevid_chain), **fields)

    # ------------------------------------------------------------------ parsed on first use

    @cached_property
    def idevid(self) -> x509.Certificate:
        return load_certificates(self.idevid_pem.encode(), "the IDevID")[0]

    @cached_property
    def builtin_anchors(self) -> list[x509.Certificate]:
        return _certificates(self.builtin_anchors_pem, "a built-in trust anchor")

    @cached_property
    def masa_anchors(self) -> list[x509.Certificate]:
        return _certificates(self.masa_anchors_pem, "a voucher (MASA) trust anchor")

    @cached_property
    def idevid_chain(self) -> list[x509.Certificate]:
        return _certificates(self.idevid_chain_pem, "the IDevID's chain")

    @property
    def serial(self) -> str:
        serial = serial_number_of(self.idevid)
        if not serial:
            raise CertificateError("the IDevID carries no subject serialNumber")
        return serial

    # ------------------------------------------------------------------ the stored form

    def to_json(self) -> dict:
        doc = {"idevid_pem": self.idevid_pem, "key_uri": self.idevid_key_uri,
               "trust_anchors_pem": list(self.builtin_anchors_pem),
               "masa_anchors_pem": list(self.masa_anchors_pem)}
        optional = {"cloud_registrar_url": self.cloud_registrar_url,
                    "idevid_chain_pem": list(self.idevid_chain_pem) or None,
                    "ldevid_key_uri": self.ldevid_key_uri, "pin_env": self.pin_env}
        doc.update({key: value for key, value in optional.items() if value is not None})
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "PledgeIdentity":
        """The identity `to_json` stored; KeyError, TypeError or ValueError when it is not one."""
        if not isinstance(doc, dict):
            raise TypeError(f"a stored identity is a JSON object, not {type(doc).__name__}")

        def text(key: str, required: bool = False) -> str | None:
            value = doc[key] if required else doc.get(key)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"identity {key} must be a string")
            return value

        def texts(key: str) -> tuple[str, ...]:
            values = doc.get(key) or ()
            if not all(isinstance(v, str) for v in values):
                raise TypeError(f"identity {key} must be a list of strings")
            return tuple(values)

        return cls(idevid_key_uri=text("key_uri", True), idevid_pem=text("idevid_pem", True),
                   builtin_anchors_pem=texts("trust_anchors_pem"), masa_anchors_pem=texts("masa_anchors_pem"),
                   cloud_registrar_url=text("cloud_registrar_url"), idevid_chain_pem=texts("idevid_chain_pem"),
                   ldevid_key_uri=text("ldevid_key_uri"), pin_env=text("pin_env"))

    def save(self, directory: Path) -> Path:
        """Store in `directory`/identity.json (atomically)."""
        path = Path(directory) / IDENTITY_FILE
        atomic_write(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, directory: Path) -> "PledgeIdentity":
        path = Path(directory) / IDENTITY_FILE
        try:
            return cls.from_json(json.loads(path.read_text()))
        except OSError as exc:
            raise IdentityError(f"cannot read the pledge identity {path}: {exc.strerror}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError(f"{path} is not a pledge identity ({exc})") from None


def _certificates(pems: tuple[str, ...], what: str) -> list[x509.Certificate]:
    return [cert for pem in pems for cert in load_certificates(pem.encode(), what)]
