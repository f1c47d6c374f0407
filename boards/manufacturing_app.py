"""The board's manufacturing mode: a station provisions the board over its console.

Until a station locks it, a board answers the manufacturing line protocol
(firmware/mfg_protocol.py) on its console: a request line is served wherever
the firmware reads a line (bootloader prompt, login, shell), as SMP frames
share the UART with the text; `board run --factory-new` boots straight into a
console that serves nothing else (the factory image). The station asks the
board who it is, has the IDevID key generated in the key store, gathers the
evidence that the key is resident (TPM: EK certificate, IAK,
ActivateCredential, TPM2_Certify over its nonce; PKCS#11: the token's report
of the key's attributes), gets a CSR, installs the certificates, trust
anchors, cloud registrar and firmware key, and locks the board.

What the board was told is staged in its flash (the manufacturing record)
and read back from there for the station's check. `lock` turns the staged
items into the board's identity in one flash write: a locked board is one
whose flash holds an identity. From then on every manufacturing request but
`identify` (and `lock` itself, which is then already done) is refused with
`locked`, for good. Until then nothing is final: a station that stops half
way leaves a board that the next run provisions from the start, and a
`generate` with a new request id replaces the key an earlier attempt made.
The request id of the key made is kept in flash, so a `generate` the
station retries after the board rebooted gets that key, not a second one.

Handlers run in the board's firmware thread; a power-off unwinds them
(`PowerLost`), and whatever they had not written to flash is lost, as on a
real board.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import PledgeforgeError
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.firmware.mfg_protocol import (INSTALL_ITEMS, PROTOCOL_VERSION, BoardChannel,
                                               Execute, Request, install_digest, is_request_line)
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm import tpm_identity
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.errors import KeyNotFoundError, KeyStoreError
from pledgeforge.hsm.signer import KeyAlgorithm
from pledgeforge.hsm.tpm_attestation import parse_public, public_key_of
from pledgeforge.hsm.x509 import make_csr, to_pem

from . import mcuboot
from .board_keystore import KeyStoreNotRunningError
from .firmware_apps import FIRMWARE_APPS, FirmwareApp

FACTORY_NEW, KEYED, LOCKED = "factory-new", "keyed", "locked"
#: what a board must have been given before it locks (TPM boards: the IAK certificate too)
REQUIRED_ITEMS = ("idevid-certificate", "trust-anchors", "cloud-registrar")


class Refusal(Exception):
    """The board's "no" to a request: an error code of mfg_protocol.ERRORS and one line."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@FIRMWARE_APPS.register
class ManufacturingApp(FirmwareApp):
    """The manufacturing firmware's half of the line protocol (see the module docstring)."""

    binds_to = "manufacturing"

    def __init__(self):
        self._channel = BoardChannel()
        #: set when `lock` made this board's identity (the factory console then ends)
        self.just_locked = False

    # ------------------------------------------------------------------ the runtime's hooks

    def power_on(self, board) -> None:
        """The reply memory is RAM: it starts empty at every power-on."""
        self._channel = BoardChannel()
        self.just_locked = False

    def state(self, board) -> str:
        flash = board.flash.state
        if flash.identity is not None:
            return LOCKED
        record = flash.manufacturing or {}
        return KEYED if record.get("public-key") else FACTORY_NEW

    def serve_line(self, board, text: str, write: Callable[[bytes], None]) -> bool:
        """Serve one console line if it is (or, mid-request, may be) the station's; True if so."""
        raw = text.encode("latin-1", "replace")
        if not (self._channel.receiving or is_request_line(raw)):
            return False
        for event in self._channel.receive(raw + b"\n"):
            if isinstance(event, Execute):
                write(self._execute(board, event.request))
            else:
                write(event.data)
        return True

    def status_fields(self, board) -> dict[str, str]:
        return {"manufacturing": self.state(board)}

    def bootstrap(self, board, emit_line: Callable[[str], None]) -> bool:
        emit_line("this is the manufacturing firmware: a station provisions the board over this "
                  "console (pledgeforge provision --port ...), then the pledge firmware bootstraps")
        return False

    # ------------------------------------------------------------------ requests

    def _execute(self, board, request: Request) -> bytes:
        handler = getattr(self, "do_" + request.command.replace("-", "_"))
        try:
            if self.state(board) == LOCKED and request.command not in ("identify", "lock"):
                raise Refusal("locked", f"board {board.serial_number} is locked: it was "
                                        "manufactured and refuses manufacturing commands for good")
            fields = handler(board, request)
        except Refusal as refusal:
            board.log_event(f"manufacturing: {request.command} refused ({refusal})")
            return self._channel.refuse(request, refusal.code, str(refusal)).data
        except KeyNotFoundError as exc:
            return self._refused(board, request, "no-key", str(exc))
        except (KeyStoreError, KeyStoreNotRunningError) as exc:
            return self._refused(board, request, "key-store", f"the key store failed: {exc}")
        except PledgeforgeError as exc:
            return self._refused(board, request, "invalid", str(exc))
        except Exception as exc:  # a bug must not take the console down: say so, go on
            return self._refused(board, request, "internal", f"{type(exc).__name__}: {exc}")
        board.log_event(f"manufacturing: {request.command}")
        return self._channel.answer(request, fields).data

    def _refused(self, board, request: Request, code: str, message: str) -> bytes:
        board.log_event(f"manufacturing: {request.command} failed ({message})")
        return self._channel.refuse(request, code, message).data

    # Each do_<command> returns the reply's fields or raises Refusal.

    def do_identify(self, board, request: Request) -> dict:
        profile = board.profile
        return {"model": profile.board.model, "profile": profile.name,
                "serial": board.serial_number, "keystore": board.keystore.type,
                "state": self.state(board), "protocol": PROTOCOL_VERSION,
                "algorithm": board.keystore.algorithm.value}

    def do_generate(self, board, request: Request) -> dict:
        algorithm = self._algorithm(board, request.args["algorithm"])
        record = dict(board.flash.state.manufacturing or {})
        if record.get("generate-rid") == request.rid and self._key_present(board, record):
            return self._generated(record)  # a retry after a reboot: the key already made
        board.keystore.clear_slot("idevid")  # an unfinished attempt's key
        uri = board.keystore.slot_uri("idevid")
        record = {"generate-rid": request.rid, "algorithm": algorithm.value}
        if board.keystore.type == "tpm":
            public = tpm_identity.create_idevid(keystores.parse_key_uri(uri), algorithm)
            record["tpm-public"] = _b64(public)
            spki = _spki(keystores.open_signer(uri).public_key)
        else:
            spki = _spki(keystores.generate_key(uri, algorithm).public_key)
        record["public-key"] = _b64(spki)
        board.flash.set_manufacturing(record)  # a new key: whatever was installed is void
        return self._generated(record)

    def do_read_ek(self, board, request: Request) -> dict:
        tcti = self._tpm_uri(board, "idevid").tcti
        endorsement = tpm_identity.read_endorsement(tcti, self._ek_kind(request))
        return {"kind": endorsement.kind, "certificate": endorsement.certificate,
                "public": endorsement.public}

    def do_create_iak(self, board, request: Request) -> dict:
        algorithm = KeyAlgorithm.parse(request.args["algorithm"])
        uri = self._tpm_uri(board, "iak")
        board.keystore.clear_slot("iak")
        return {"public": tpm_identity.create_iak(uri, algorithm)}

    def do_activate(self, board, request: Request) -> dict:
        secret = tpm_identity.activate_credential(self._tpm_uri(board, "iak"),
                                                  request.args["credential"], self._ek_kind(request))
        return {"secret": secret}

    def do_certify(self, board, request: Request) -> dict:
        idevid, iak = self._tpm_uri(board, "idevid"), self._tpm_uri(board, "iak")
        certification = tpm_identity.certify(idevid, iak, request.args["nonce"])
        return {"attest": certification.attest, "signature": certification.signature,
                "public": tpm_identity.read_public(idevid)}

    def do_key_report(self, board, request: Request) -> dict:
        if board.keystore.type != "pkcs11":
            raise Refusal("not-supported", "key-report is for PKCS#11 secure elements; a TPM "
                                           "board proves its key with certify")
        self._require_key(board)
        from pledgeforge.hsm.pkcs11_backend import key_report

        report = key_report(keystores.parse_key_uri(board.keystore.slot_uri("idevid")))
        return {"public-key": report.public_key_der, "local": report.local,
                "never-extractable": report.never_extractable, "sensitive": report.sensitive,
                "always-sensitive": report.always_sensitive, "extractable": report.extractable}

    def do_csr(self, board, request: Request) -> dict:
        self._require_key(board)
        serial = board.serial_number
        subject = request.args.get("subject") or f"CN=IDevID {serial},serialNumber={serial}"
        signer = keystores.open_signer(board.keystore.slot_uri("idevid"))
        return {"csr": make_csr(signer, subject).public_bytes(serialization.Encoding.DER)}

    def do_install(self, board, request: Request) -> dict:
        item, data, url = request.args["item"], request.args["data"], request.args.get("url")
        if item not in INSTALL_ITEMS:
            raise Refusal("bad-request", f"unknown item {item!r}; items: {', '.join(INSTALL_ITEMS)}")
        record = self._require_key(board)
        self._check_item(board, record, item, data, url)
        items = dict(record.get("items") or {})
        items[item] = {"data": _b64(data), **({"url": url} if url is not None else {})}
        board.flash.set_manufacturing({**record, "items": items})
        stored = (board.flash.state.manufacturing or {}).get("items", {}).get(item, {})
        read_back = _unb64(stored.get("data", ""))
        return {"item": item, "sha256": install_digest(item, read_back, stored.get("url"))}

    def do_lock(self, board, request: Request) -> dict:
        if self.state(board) == LOCKED:
            return {"locked": True}  # a lock repeated after the board locked: done already
        record = self._require_key(board)
        items = record.get("items") or {}
        required = REQUIRED_ITEMS + (("iak-certificate",) if board.keystore.type == "tpm" else ())
        missing = [item for item in required if item not in items]
        if missing:
            raise Refusal("invalid", f"install {', '.join(missing)} before locking the board")

        def data(item: str) -> bytes:
            return _unb64(items[item]["data"])

        if "firmware-key" in items:
            board.slots.install_verify_key(data("firmware-key"))
        idevid = x509.load_der_x509_certificate(data("idevid-certificate"))
        identity = PledgeIdentity.from_certificates(
            board.keystore.slot_uri("idevid"), idevid,
            builtin_anchors=load_certificates(data("cloud-registrar"), "the cloud registrar anchor"),
            masa_anchors=load_certificates(data("trust-anchors"), "the trust anchors"),
            cloud_registrar_url=items["cloud-registrar"]["url"])
        kept = {"locked-at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "algorithm": record.get("algorithm", "")}
        if "iak-certificate" in items:
            kept["iak-certificate"] = to_pem(
                x509.load_der_x509_certificate(data("iak-certificate"))).decode()
        board.flash.commit_identity(identity, kept)
        self.just_locked = True
        board.log_event(f"manufactured: IDevID {idevid.subject.rfc4514_string()}, locked")
        return {"locked": True}

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _generated(record: dict) -> dict:
        fields = {"public-key": _unb64(record["public-key"])}
        if "tpm-public" in record:
            fields["tpm-public"] = _unb64(record["tpm-public"])
        return fields

    @staticmethod
    def _algorithm(board, text: str) -> KeyAlgorithm:
        algorithm = KeyAlgorithm.parse(text)
        if algorithm != board.keystore.algorithm:
            raise Refusal("not-supported", f"this board's key store makes "
                                           f"{board.keystore.algorithm.value} keys, not {text}")
        return algorithm

    @staticmethod
    def _key_present(board, record: dict) -> bool:
        try:
            public = keystores.open_signer(board.keystore.slot_uri("idevid")).public_key
        except KeyNotFoundError:
            return False
        return _spki(public) == _unb64(record["public-key"])

    @staticmethod
    def _require_key(board) -> dict:
        record = board.flash.state.manufacturing or {}
        if not record.get("public-key"):
            raise Refusal("no-key", "no IDevID key yet: generate it first")
        return dict(record)

    @staticmethod
    def _tpm_uri(board, slot: str):
        if board.keystore.type != "tpm":
            raise Refusal("not-supported", f"this board's key store is {board.keystore.type}, "
                                           "not a TPM")
        return keystores.parse_key_uri(board.keystore.slot_uri(slot))

    @staticmethod
    def _ek_kind(request: Request) -> str:
        kind = request.args.get("kind") or tpm_identity.DEFAULT_EK_KIND
        if kind not in tpm_identity.EK_KINDS:
            raise Refusal("bad-request", f"unknown EK kind {kind!r}; kinds: "
                                         f"{', '.join(tpm_identity.EK_KINDS)}")
        return kind

    def _check_item(self, board, record: dict, item: str, data: bytes, url: str | None) -> None:
        """Refuse what the board could never use: another key's certificate, a broken anchor."""
        if item == "iak-certificate" and board.keystore.type != "tpm":
            raise Refusal("not-supported", "only a TPM board has an IAK")
        if item in ("idevid-certificate", "iak-certificate"):
            try:
                certificate = x509.load_der_x509_certificate(data)
            except ValueError as exc:
                raise Refusal("invalid", f"the {item} is not a DER certificate ({exc})") from None
            if item == "idevid-certificate":
                expected, what = _unb64(record["public-key"]), "the IDevID key this board generated"
            else:
                iak = tpm_identity.read_public(self._tpm_uri(board, "iak"))
                expected = _spki(public_key_of(parse_public(iak, "IAK public area"), "IAK"))
                what = "this board's IAK"
            if _spki(certificate.public_key()) != expected:
                raise Refusal("invalid", f"the {item} certifies another key than {what}")
        elif item in ("trust-anchors", "cloud-registrar"):
            load_certificates(data, f"the {item} anchors")
            if item == "cloud-registrar" and not (url or "").startswith("https://"):
                raise Refusal("invalid", "the cloud registrar needs an https:// url")
        elif item == "firmware-key":
            if board.profile.image.verify_key is not None:
                raise Refusal("not-supported", f"the profile names its firmware key "
                                               f"({board.profile.image.verify_key})")
            mcuboot.load_public_key(data, "the firmware key")


__all__ = ["ManufacturingApp", "Refusal", "FACTORY_NEW", "KEYED", "LOCKED",
           "REQUIRED_ITEMS"]
