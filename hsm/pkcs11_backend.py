"""PKCS#11 keys through python-pkcs11 (SoftHSM2 in tests, real HSMs in the field).

python-pkcs11 calls C_Initialize without locking arguments, so SoftHSM2 runs
unlocked and two threads inside one token crash the process. Every call on a
module therefore goes through that module's one lock.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass

import pkcs11
import pkcs11.exceptions as p11err
from pkcs11 import Attribute, KeyType, Mechanism, MGF, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key
from asn1crypto.keys import RSAPublicKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

from .errors import (KeyExistsError, KeyNotFoundError, KeyStoreError, KeyUriError, PinError,
                     TokenNotFoundError, UnsupportedAlgorithmError)
from .keyuri import Pkcs11Uri
from .signer import KeyAlgorithm, Padding, Signer, check_digest_length, ecdsa_raw_to_der

# DigestInfo prefixes (RFC 8017 §9.2 note 1) for CKM_RSA_PKCS over a digest.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256, 32),
    "sha384": (Mechanism.SHA384, MGF.SHA384, 48),
    "sha512": (Mechanism.SHA512, MGF.SHA512, 64),
}
_CURVE_NAMES = {KeyAlgorithm.EC_P256: "secp256r1", KeyAlgorithm.EC_P384: "secp384r1"}


class _Module:
    """One loaded PKCS#11 module: its lock and its logged-in sessions."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()
        self._conf_at_init = os.environ.get("SOFTHSM2_CONF")
        try:
            self.lib = pkcs11.lib(path)
        except (RuntimeError, OSError, p11err.PKCS11Error) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {path}: {exc}") from None
        # token label -> (session, fingerprint of the PIN it logged in with)
        self.sessions: dict[str, tuple[pkcs11.Session, bytes]] = {}

    def _reinitialize(self) -> None:
        for session, _ in self.sessions.values():
            try:
                session.close()
            except p11err.PKCS11Error:
                pass
        self.sessions.clear()
        self.lib.reinitialize()
        self._conf_at_init = os.environ.get("SOFTHSM2_CONF")

    def token(self, label: str) -> pkcs11.Token:
        # SoftHSM reads its config and token directory at C_Initialize; tokens
        # created since (by softhsm2-util or a new SOFTHSM2_CONF) need a re-init.
        if os.environ.get("SOFTHSM2_CONF") != self._conf_at_init:
            self._reinitialize()
        found: list[pkcs11.Token] = []
        for attempt in range(_TOKEN_READ_ATTEMPTS):
            found, unreadable = self._present_tokens()
            for tok in found:
                if tok.label == label:
                    return tok
            if not unreadable and attempt > 0:
                break
            if attempt == 0:
                self._reinitialize()
            elif unreadable:
                _backoff(attempt)
        labels = ", ".join(sorted(t.label for t in found if t.label)) or "none"
        raise TokenNotFoundError(f"no PKCS#11 token labelled {label!r} in {self.path} "
                                 f"(tokens present: {labels})")

    def _present_tokens(self) -> tuple[list[pkcs11.Token], int]:
        """The readable tokens, and how many slots could not be read.

        SoftHSM2 rewrites a token's file when a process logs in to it; another
        process reading that file at the same moment gets CKR_GENERAL_ERROR.
        Such a slot is skipped here and the caller tries again (bounded).
        """
        tokens, unreadable = [], 0
        for slot in self.lib.get_slots(token_present=True):
            try:
                tokens.append(slot.get_token())
            except p11err.GeneralError:
                unreadable += 1
        return tokens, unreadable

    def session(self, uri: Pkcs11Uri) -> pkcs11.Session:
        """The one logged-in read-write session on the URI's token.

        Login state is shared by all sessions of an application, so one
        session per token is both sufficient and the only simple way.
        """
        if not uri.token:
            raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
        pin = uri.pin()
        # A cached session was logged in with some PIN; a caller presenting a
        # different one must face the token again rather than ride on it.
        fingerprint = hashlib.sha256(b"pledgeforge-pin\0" + (pin or "").encode()).digest()
        cached = self.sessions.get(uri.token)
        if cached is not None:
            if hmac.compare_digest(cached[1], fingerprint):
                return cached[0]
            self.drop_session(uri)
        tok = self.token(uri.token)
        try:
            session = self._open(tok, pin)
        except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
            raise PinError(f"wrong PIN for PKCS#11 token {uri.token!r}") from None
        except p11err.PinLocked:
            raise PinError(f"the user PIN of token {uri.token!r} is locked; reset it with the SO PIN") from None
        except p11err.UserPinNotInitialized:
            raise PinError(f"token {uri.token!r} has no user PIN set") from None
        except p11err.PKCS11Error as exc:
            raise KeyStoreError(f"cannot open a session on token {uri.token!r}: {type(exc).__name__}") from None
        if pin is None:
            # A token that needs login will fail later with a less clear error.
            if tok.flags & pkcs11.TokenFlag.LOGIN_REQUIRED:
                session.close()
                raise PinError(f"token {uri.token!r} needs a PIN: add pin-source=file:PATH "
                               "or pin-source=env:NAME to the key URI")
        self.sessions[uri.token] = (session, fingerprint)
        return session

    @staticmethod
    def _open(tok: pkcs11.Token, pin: str | None) -> pkcs11.Session:
        """Open and log in; a token file caught mid-rewrite by another process is retried (bounded)."""
        for attempt in range(_TOKEN_READ_ATTEMPTS):
            try:
                return tok.open(user_pin=pin, rw=True)
            except p11err.GeneralError:
                if attempt == _TOKEN_READ_ATTEMPTS - 1:
                    raise
                _backoff(attempt + 1)
        raise AssertionError("unreachable")

    def drop_session(self, uri: Pkcs11Uri) -> None:
        cached = self.sessions.pop(uri.token, None)
        if cached is not None:
            cached[0].close()


#: tries at reading a token that another process is rewriting, ~1 s in all
_TOKEN_READ_ATTEMPTS = 8
_pause = threading.Event()  # never set: a bounded wait between tries


def _backoff(attempt: int) -> None:
    _pause.wait(0.01 * 2 ** min(attempt, 6))


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def module(path: str) -> _Module:
    with _modules_lock:
        if path not in _modules:
            if not os.path.exists(path):
                raise KeyStoreError(f"PKCS#11 module {path} does not exist (check module-path)")
            _modules[path] = _Module(path)
        return _modules[path]


def _object_template(uri: Pkcs11Uri) -> dict:
    template = {}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    if not template:
        raise KeyUriError("the pkcs11 URI names no key (add object=LABEL or id=...)")
    return template


def _find_one(session, uri: Pkcs11Uri, object_class: ObjectClass):
    template = {Attribute.CLASS: object_class, **_object_template(uri)}
    found = list(session.get_objects(template))
    if not found:
        return None
    if len(found) > 1:
        raise KeyStoreError(f"{len(found)} objects match {uri} on token {uri.token!r}; "
                            "add id=... to the URI to pick one")
    return found[0]


def _public_key_of(pub_obj):
    if pub_obj.key_type == KeyType.EC:
        der = encode_ec_public_key(pub_obj)
    elif pub_obj.key_type == KeyType.RSA:
        der = encode_rsa_public_key(pub_obj)
        return serialization.load_der_public_key(_rsa_spki(der))
    else:
        raise UnsupportedAlgorithmError(f"unsupported PKCS#11 key type {pub_obj.key_type!r}")
    return serialization.load_der_public_key(der)


def _rsa_spki(pkcs1_der: bytes) -> bytes:
    """python-pkcs11 gives a PKCS#1 RSAPublicKey; wrap it as SubjectPublicKeyInfo."""
    parsed = RSAPublicKey.load(pkcs1_der)
    numbers = crypto_rsa.RSAPublicNumbers(parsed["public_exponent"].native, parsed["modulus"].native)
    return numbers.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


class Pkcs11Signer(Signer):
    """A private key object on a PKCS#11 token."""

    def __init__(self, uri: Pkcs11Uri):
        self.uri = uri
        self.description = str(uri)
        self._module = module(uri.module_path)
        self._session = None
        with self._module.lock:
            session = self._private_key()[0]
            pub = _find_one(session, uri, ObjectClass.PUBLIC_KEY)
            if pub is None and self._priv[Attribute.ID]:
                pub = _find_one(session, uri.with_object(None, self._priv[Attribute.ID]),
                                ObjectClass.PUBLIC_KEY)
            if pub is None:
                raise KeyNotFoundError(f"key {uri} has no public key object on the token")
            self._public_key = _public_key_of(pub)

    def _private_key(self):
        """(session, private key object), looked up again if the session changed."""
        session = self._module.session(self.uri)
        if session is not self._session:
            priv = _find_one(session, self.uri, ObjectClass.PRIVATE_KEY)
            if priv is None:
                raise KeyNotFoundError(f"no private key {self.uri} on token {self.uri.token!r} "
                                       "(generate it with `pledgeforge keys generate`)")
            self._session, self._priv = session, priv
        return self._session, self._priv

    @property
    def public_key(self):
        return self._public_key

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        algorithm = self.algorithm
        with self._module.lock:
            priv = self._private_key()[1]
            try:
                if algorithm.is_ec:
                    # SoftHSM2 has no CKM_ECDSA_SHA256: hash here, sign with CKM_ECDSA.
                    return ecdsa_raw_to_der(priv.sign(dgst, mechanism=Mechanism.ECDSA))
                if pad is Padding.PSS:
                    return priv.sign(dgst, mechanism=Mechanism.RSA_PKCS_PSS,
                                           mechanism_param=_PSS_PARAMS[hash_name])
                return priv.sign(_DIGEST_INFO[hash_name] + dgst, mechanism=Mechanism.RSA_PKCS)
            except p11err.MechanismInvalid:
                raise UnsupportedAlgorithmError(
                    f"token {self.uri.token!r} cannot sign with {algorithm.value}/{hash_name}/{pad.value}") from None
            except p11err.PKCS11Error as exc:
                raise KeyStoreError(f"signing with {self.uri} failed: {type(exc).__name__}") from None

    def close(self):
        # Sessions are shared per token within the process; nothing per key to free.
        pass


@dataclass(frozen=True)
class Pkcs11KeyInfo:
    label: str
    id_hex: str
    algorithm: str
    sensitive: bool
    extractable: bool


def generate(uri: Pkcs11Uri, algorithm: KeyAlgorithm) -> Pkcs11Signer:
    """Generate a non-extractable key pair on the token, sharing one CKA_ID."""
    if uri.object is None:
        raise KeyUriError("name the new key with object=LABEL in the pkcs11 URI")
    mod = module(uri.module_path)
    key_id = uri.id or secrets.token_bytes(8)
    with mod.lock:
        session = mod.session(uri)
        clash = list(session.get_objects({Attribute.LABEL: uri.object}))
        if uri.id is not None:
            clash += list(session.get_objects({Attribute.ID: uri.id}))
        if clash:
            raise KeyExistsError(f"token {uri.token!r} already holds an object {uri.object!r}; "
                                 "choose another object label or delete the old key")
        common = {Attribute.TOKEN: True, Attribute.LABEL: uri.object, Attribute.ID: key_id}
        private_template = {**common, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                            Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
        public_template = {**common, Attribute.VERIFY: True}
        try:
            if algorithm.is_ec:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_NAMES[algorithm])},
                    local=True)
                params.generate_keypair(store=True, public_template=public_template,
                                        private_template=private_template)
            else:
                session.generate_keypair(KeyType.RSA, algorithm.rsa_bits, store=True,
                                         public_template=public_template,
                                         private_template=private_template)
        except (p11err.MechanismInvalid, p11err.DomainParamsInvalid, p11err.KeySizeRange):
            raise UnsupportedAlgorithmError(
                f"token {uri.token!r} cannot generate {algorithm.value} keys") from None
        except p11err.PKCS11Error as exc:
            raise KeyStoreError(f"key generation on token {uri.token!r} failed: {type(exc).__name__}") from None
    return Pkcs11Signer(Pkcs11Uri(uri.token, uri.object, key_id, uri.module_path,
                                  uri.pin_source, uri.pin_value, uri.pin_env))


def list_keys(uri: Pkcs11Uri) -> list[Pkcs11KeyInfo]:
    """Every private key on the URI's token, with the attributes that matter."""
    mod = module(uri.module_path)
    out = []
    with mod.lock:
        session = mod.session(uri)
        # Materialise: PKCS#11 allows one object search per session at a time.
        for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
            if obj.key_type == KeyType.EC:
                pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                                 Attribute.ID: obj[Attribute.ID]}))
                try:
                    alg = KeyAlgorithm.of_public_key(_public_key_of(pubs[0])).value if pubs else "ec"
                except UnsupportedAlgorithmError:
                    alg = "ec"
            elif obj.key_type == KeyType.RSA:
                alg = f"rsa-{obj.key_length}"
            else:
                alg = str(obj.key_type)
            out.append(Pkcs11KeyInfo(label=obj.label or "", id_hex=(obj[Attribute.ID] or b"").hex(),
                                     algorithm=alg, sensitive=bool(obj[Attribute.SENSITIVE]),
                                     extractable=bool(obj[Attribute.EXTRACTABLE])))
    return out
