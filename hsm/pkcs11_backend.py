"""PKCS#11 keys through python-pkcs11 (SoftHSM2 in tests, real HSMs in the field).

Where a module runs. A key's URI names its module (`module-path=` or
`module-name=`) and the environment the module reads at C_Initialize
(`x-module-env=`, e.g. SoftHSM2's SOFTHSM2_CONF). A module is a shared
library: the dynamic loader gives one process one instance of it, and that
instance reads its environment once. So:

- when the key's environment is what this process already has (or it asks
  for none), the module is loaded here (`LocalModule`);
- otherwise it is loaded in a module host: a child process started with that
  environment, reached over a socket pair (`pkcs11_host.HostedModule`).

Both answer the same operations (public_key, key_attributes, sign, sign_many,
generate, list_keys, delete) on plain values, so `Pkcs11Signer` does not know
which one it has. One process can thus use two SoftHSM configurations, and the
process environment is never changed. The host costs one round trip per call
(benchmarks/pkcs11_sign_rate.py measures it), so `sign_many` signs a batch of
digests in one, under one hold of the token store's lock.

python-pkcs11 calls C_Initialize without locking arguments, so SoftHSM2 runs
unlocked and two threads inside one module crash the process. Every call on
a module instance therefore goes through that instance's one lock, and its
async signatures queue on one worker thread. SoftHSM2's file object store is
not safe across processes either (a login or a key generation rewrites files
another process may be reading): every call into it, from C_Initialize on,
also holds the store's cross-process lock (store_lock.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pkcs11
import pkcs11.exceptions as p11err
from asn1crypto.keys import PublicKeyInfo, RSAPublicKey
from pkcs11 import Attribute, KeyType, Mechanism, MGF, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key
from cryptography.hazmat.primitives import serialization

from .errors import (KeyExistsError, KeyNotFoundError, KeyStoreError, KeyUriError,
                     ModuleNotConfiguredError, PinError, TokenNotFoundError, UnsupportedAlgorithmError)
from .keyuri import Pkcs11Uri
from .signer import (KeyAlgorithm, OtherKeyAlgorithm, Padding, Signer, check_digest_length,
                     ecdsa_raw_to_der)
from .softhsm import DEFAULT_CONF, file_store_lock, is_softhsm_module

if TYPE_CHECKING:
    # Imported where a report is made: a module host, which starts with every key
    # operation of a process whose key needs another module environment, never makes one.
    from .key_evidence import TokenKeyReport

#: what `generate` makes (SoftHSM2 and the HSMs we know do all of these)
ALGORITHMS = ("ec-p256", "ec-p384", "ec-p521", "rsa-2048", "rsa-3072", "rsa-4096")

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

#: what a token answers about a session it no longer has (closed or invalidated
#: under us, the token removed); a fresh session is worth one more try
_SESSION_LOST = (p11err.SessionHandleInvalid, p11err.SessionClosed, p11err.ObjectHandleInvalid,
                 p11err.KeyHandleInvalid, p11err.DeviceRemoved, p11err.TokenNotPresent)

#: tries at reading a token that another process is rewriting, ~1 s in all
_TOKEN_READ_ATTEMPTS = 8
_pause = threading.Event()  # never set: a bounded wait between tries


def _backoff(attempt: int) -> None:
    _pause.wait(0.01 * 2 ** min(attempt, 6))


def _key_name(token: str, label: str | None, key_id: bytes | None) -> str:
    """How errors name a key: its URI path, without module or PIN."""
    parts = [f"token={token}"]
    if label is not None:
        parts.append(f"object={label}")
    if key_id is not None:
        parts.append("id=" + "".join(f"%{b:02X}" for b in key_id))
    return "pkcs11:" + ";".join(parts)


def _template(label: str | None, key_id: bytes | None) -> dict:
    template = {}
    if label is not None:
        template[Attribute.LABEL] = label
    if key_id is not None:
        template[Attribute.ID] = key_id
    if not template:
        raise KeyUriError("the pkcs11 URI names no key (add object=LABEL or id=...)")
    return template


def _find(session, object_class: ObjectClass, label: str | None, key_id: bytes | None) -> list:
    # Materialised: PKCS#11 allows one object search per session at a time.
    return list(session.get_objects({Attribute.CLASS: object_class, **_template(label, key_id)}))


def _find_one(session, object_class: ObjectClass, token: str, label: str | None,
              key_id: bytes | None):
    found = _find(session, object_class, label, key_id)
    if not found:
        return None
    if len(found) > 1:
        raise KeyStoreError(f"{len(found)} objects match {_key_name(token, label, key_id)}; "
                            "add id=... to the URI to pick one")
    return found[0]


def _spki_of(pub_obj) -> bytes:
    """DER SubjectPublicKeyInfo of a public key object."""
    if pub_obj.key_type == KeyType.EC:
        return encode_ec_public_key(pub_obj)
    if pub_obj.key_type == KeyType.RSA:
        # python-pkcs11 gives a PKCS#1 RSAPublicKey; wrap it as SubjectPublicKeyInfo.
        pkcs1 = RSAPublicKey.load(encode_rsa_public_key(pub_obj))
        return PublicKeyInfo({"algorithm": {"algorithm": "rsa"}, "public_key": pkcs1}).dump()
    raise UnsupportedAlgorithmError(f"unsupported PKCS#11 key type {pub_obj.key_type!r}")


def _algorithm_of(spki: bytes) -> str:
    try:
        return KeyAlgorithm.of_public_key(serialization.load_der_public_key(spki)).value
    except (UnsupportedAlgorithmError, ValueError):
        return "unknown"


class LocalModule:
    """A PKCS#11 module loaded in this process: its lock, its logged-in sessions, its keys.

    The operations take and return plain values (strings, bytes, tuples), so a
    module host can run the very same ones for a parent process.
    """

    def __init__(self, path: str, description: str | None = None):
        self.path = path
        #: the module and the configuration it was loaded with, for errors
        self.description = description or path
        self.lock = threading.RLock()
        #: the module's configuration is this process's environment (here or in a module host)
        self._store_lock = file_store_lock(path, os.environ)
        self._depth = 0
        try:
            with self.exclusive():
                self.lib = pkcs11.lib(path)
        except (RuntimeError, OSError, p11err.PKCS11Error) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {path}: {exc}") from None
        # token label -> (session, fingerprint of the PIN it logged in with)
        self.sessions: dict[str, tuple[pkcs11.Session, bytes]] = {}
        # (token, label, id) -> (session it was found in, private key object, its key type)
        self._keys: dict[tuple, tuple[pkcs11.Session, object, KeyType]] = {}
        #: one worker (started on first use): async signatures on this module wait their turn here
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="pkcs11")

    @contextmanager
    def exclusive(self):
        """This instance's thread lock, then the token store's process lock where it has one
        (taken once by the outermost caller: a second flock from this process would wait on itself)."""
        with self.lock:
            outermost = self._depth == 0
            self._depth += 1
            try:
                with self._store_lock.held() if self._store_lock and outermost else nullcontext():
                    yield
            finally:
                self._depth -= 1

    # ------------------------------------------------------------------ tokens and sessions

    def _reinitialize(self) -> None:
        for session, _ in self.sessions.values():
            try:
                session.close()
            except p11err.PKCS11Error:
                pass
        self.sessions.clear()
        self._keys.clear()
        self.lib.reinitialize()

    def _token(self, label: str) -> pkcs11.Token:
        found: list[pkcs11.Token] = []
        for attempt in range(_TOKEN_READ_ATTEMPTS):
            found, unreadable = self._present_tokens()
            for tok in found:
                if tok.label == label:
                    return tok
            if not unreadable and attempt > 0:
                break
            if attempt == 0:
                # SoftHSM reads its token directory at C_Initialize; tokens
                # created since (by softhsm2-util) need a re-initialisation.
                self._reinitialize()
            elif unreadable:
                _backoff(attempt)
        raise self._missing_token(label, [t.label for t in found if t.label])

    def _missing_token(self, label: str, present: list[str]) -> TokenNotFoundError:
        """The error for a token that is not there, naming the likely cause: SoftHSM given no
        configuration (so it read its default one), or the tokens of the one it was given."""
        text = f"no PKCS#11 token labelled {label!r} in {{}} (tokens present: {', '.join(sorted(present)) or 'none'})"
        if not is_softhsm_module(self.path):
            return TokenNotFoundError(text.format(self.description))
        conf = os.environ.get("SOFTHSM2_CONF")
        if conf is None:
            return ModuleNotConfiguredError(
                text.format(self.description) + f": the key URI gives SoftHSM no configuration, so it "
                f"read its default {DEFAULT_CONF}; add x-module-env=SOFTHSM2_CONF=PATH to the key URI")
        # In a module host the description names the configuration; here it came from our environment.
        where = self.description if self.description != self.path else \
            f"{self.path} with SOFTHSM2_CONF={conf} (from the environment)"
        return TokenNotFoundError(text.format(where))

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

    def _session(self, token: str | None, pin: str | None) -> pkcs11.Session:
        """The one logged-in read-write session on `token`.

        Login state is shared by all sessions of an application, so one
        session per token is both sufficient and the only simple way.
        """
        if not token:
            raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
        # A cached session was logged in with some PIN; a caller presenting a
        # different one must face the token again rather than ride on it.
        fingerprint = hashlib.sha256(b"pledgeforge-pin\0" + (pin or "").encode()).digest()
        cached = self.sessions.get(token)
        if cached is not None:
            if hmac.compare_digest(cached[1], fingerprint):
                return cached[0]
            self._drop_session(token)
        tok = self._token(token)
        try:
            session = self._open(tok, pin)
        except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
            raise PinError(f"wrong PIN for PKCS#11 token {token!r}") from None
        except p11err.PinLocked:
            raise PinError(f"the user PIN of token {token!r} is locked; reset it with the SO PIN") from None
        except p11err.UserPinNotInitialized:
            raise PinError(f"token {token!r} has no user PIN set") from None
        except p11err.PKCS11Error as exc:
            raise KeyStoreError(f"cannot open a session on token {token!r}: {type(exc).__name__}") from None
        if pin is None:
            # A token that needs login will fail later with a less clear error.
            if tok.flags & pkcs11.TokenFlag.LOGIN_REQUIRED:
                session.close()
                raise PinError(f"token {token!r} needs a PIN: add pin-source=file:PATH "
                               "or pin-source=env:NAME to the key URI")
        self.sessions[token] = (session, fingerprint)
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

    def _drop_session(self, token: str) -> None:
        cached = self.sessions.pop(token, None)
        self._keys = {k: v for k, v in self._keys.items() if k[0] != token}
        if cached is not None:
            try:
                cached[0].close()
            except p11err.PKCS11Error:
                pass  # already gone on the token's side: what we are cleaning up after

    def _private_key(self, token: str, pin: str | None, label: str | None,
                     key_id: bytes | None) -> tuple[object, KeyType]:
        """The private key object and its type, looked up again when its session changed
        (the type is read once: on a network HSM each attribute read is a round trip)."""
        session = self._session(token, pin)
        cached = self._keys.get((token, label, key_id))
        if cached is not None and cached[0] is session:
            return cached[1], cached[2]
        priv = _find_one(session, ObjectClass.PRIVATE_KEY, token, label, key_id)
        if priv is None:
            raise KeyNotFoundError(f"no private key {_key_name(token, label, key_id)} on token "
                                   f"{token!r} (generate it with `pledgeforge keys generate`)")
        self._keys[(token, label, key_id)] = (session, priv, priv.key_type)
        return priv, priv.key_type

    # ------------------------------------------------------------------ operations

    def public_key(self, token: str, pin: str | None, label: str | None,
                   key_id: bytes | None) -> bytes:
        """DER SubjectPublicKeyInfo of the key pair whose private half the URI names."""
        with self.exclusive():
            priv = self._private_key(token, pin, label, key_id)[0]
            session = self._session(token, pin)
            pub = _find_one(session, ObjectClass.PUBLIC_KEY, token, label, key_id)
            if pub is None and priv[Attribute.ID]:
                pub = _find_one(session, ObjectClass.PUBLIC_KEY, token, None, priv[Attribute.ID])
            if pub is None:
                raise KeyNotFoundError(f"key {_key_name(token, label, key_id)} has no public key "
                                       "object on the token")
            return _spki_of(pub)

    def key_attributes(self, token: str, pin: str | None, label: str | None,
                       key_id: bytes | None) -> tuple[bytes, bool, bool, bool, bool, bool]:
        """(SubjectPublicKeyInfo, CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE,
        CKA_ALWAYS_SENSITIVE, CKA_EXTRACTABLE) of the private key the URI names."""
        spki = self.public_key(token, pin, label, key_id)
        with self.lock:
            priv = self._private_key(token, pin, label, key_id)[0]
            try:
                flags = tuple(bool(priv[a]) for a in (
                    Attribute.LOCAL, Attribute.NEVER_EXTRACTABLE, Attribute.SENSITIVE,
                    Attribute.ALWAYS_SENSITIVE, Attribute.EXTRACTABLE))
            except p11err.PKCS11Error as exc:
                raise KeyStoreError(f"reading the attributes of {_key_name(token, label, key_id)} "
                                    f"failed: {type(exc).__name__}") from None
        return (spki, *flags)

    def sign(self, token: str, pin: str | None, label: str | None, key_id: bytes | None,
             dgst: bytes, hash_name: str, pad: str) -> bytes:
        """A signature over a digest: DER ECDSA-Sig-Value, or the RSA signature bytes."""
        return self.sign_many(token, pin, label, key_id, [dgst], hash_name, pad)[0]

    def sign_many(self, token: str, pin: str | None, label: str | None, key_id: bytes | None,
                  digests: list[bytes], hash_name: str, pad: str) -> list[bytes]:
        """A signature over each digest, in order (one module-host round trip for all of them).

        A session the token no longer knows (closed or invalidated under us, the
        token removed and put back) is dropped and the batch tried once more on a
        freshly opened and logged-in session; a second failure is reported.
        """
        with self.exclusive():
            for attempt in (1, 2):
                priv, key_type = self._private_key(token, pin, label, key_id)
                try:
                    return [self._sign_one(priv, key_type, dgst, hash_name, pad) for dgst in digests]
                except _SESSION_LOST as exc:
                    self._drop_session(token)
                    if attempt == 2:
                        raise KeyStoreError(f"signing with {_key_name(token, label, key_id)} failed "
                                            f"twice: {type(exc).__name__}") from None
                except p11err.MechanismInvalid:
                    raise UnsupportedAlgorithmError(
                        f"token {token!r} cannot sign with {key_type.name}/{hash_name}/{pad}") from None
                except p11err.PKCS11Error as exc:
                    raise KeyStoreError(f"signing with {_key_name(token, label, key_id)} failed: "
                                        f"{type(exc).__name__}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _sign_one(priv, key_type: KeyType, dgst: bytes, hash_name: str, pad: str) -> bytes:
        if key_type == KeyType.EC:
            # SoftHSM2 has no CKM_ECDSA_SHA256: hash first, sign with CKM_ECDSA.
            return ecdsa_raw_to_der(priv.sign(dgst, mechanism=Mechanism.ECDSA))
        if pad == Padding.PSS.value:
            return priv.sign(dgst, mechanism=Mechanism.RSA_PKCS_PSS,
                             mechanism_param=_PSS_PARAMS[hash_name])
        return priv.sign(_DIGEST_INFO[hash_name] + dgst, mechanism=Mechanism.RSA_PKCS)

    def generate(self, token: str, pin: str | None, label: str, key_id: bytes | None,
                 algorithm: str) -> bytes:
        """A non-extractable key pair whose halves share one CKA_ID; returns that id."""
        spec = _generation_spec(algorithm)
        key_id = key_id or secrets.token_bytes(8)
        with self.exclusive():
            session = self._session(token, pin)
            clash = list(session.get_objects({Attribute.LABEL: label}))
            clash += list(session.get_objects({Attribute.ID: key_id}))
            if clash:
                raise KeyExistsError(f"token {token!r} already holds an object {label!r}; "
                                     "choose another object label or delete the old key")
            common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
            private_template = {**common, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
            public_template = {**common, Attribute.VERIFY: True}
            try:
                if isinstance(spec, str):
                    params = session.create_domain_parameters(
                        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(spec)},
                        local=True)
                    params.generate_keypair(store=True, public_template=public_template,
                                            private_template=private_template)
                else:
                    session.generate_keypair(KeyType.RSA, spec, store=True,
                                             public_template=public_template,
                                             private_template=private_template)
            except (p11err.MechanismInvalid, p11err.DomainParamsInvalid, p11err.KeySizeRange):
                raise UnsupportedAlgorithmError(
                    f"token {token!r} cannot generate {algorithm} keys") from None
            except p11err.PKCS11Error as exc:
                raise KeyStoreError(f"key generation on token {token!r} failed: {type(exc).__name__}") from None
        return key_id

    def list_keys(self, token: str, pin: str | None) -> list[tuple]:
        """(label, id hex, algorithm, sensitive, extractable) of every private key on the token."""
        out = []
        with self.exclusive():
            session = self._session(token, pin)
            for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})):
                if obj.key_type == KeyType.EC:
                    pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                                     Attribute.ID: obj[Attribute.ID]}))
                    alg = _algorithm_of(_spki_of(pubs[0])) if pubs else "ec"
                elif obj.key_type == KeyType.RSA:
                    alg = f"rsa-{obj.key_length}"
                else:
                    alg = str(obj.key_type)
                out.append((obj.label or "", (obj[Attribute.ID] or b"").hex(), alg,
                            bool(obj[Attribute.SENSITIVE]), bool(obj[Attribute.EXTRACTABLE])))
        return out

    def delete(self, token: str, pin: str | None, label: str | None,
               key_id: bytes | None) -> tuple[int, int]:
        """Destroy the private key the URI names and its public key; (private, public) destroyed.

        A public key left alone (a generation cut short between the two halves) is
        destroyed too: it would block a new key under its label."""
        with self.exclusive():
            session = self._session(token, pin)
            privs = _find(session, ObjectClass.PRIVATE_KEY, label, key_id)
            if len(privs) > 1:
                raise KeyStoreError(f"{len(privs)} private keys match {_key_name(token, label, key_id)}; "
                                    "add id=... to the URI to pick one")
            pubs = _find(session, ObjectClass.PUBLIC_KEY, label, key_id)
            if not pubs and privs and privs[0][Attribute.ID]:
                pubs = _find(session, ObjectClass.PUBLIC_KEY, None, privs[0][Attribute.ID])
            if not privs and not pubs:
                raise KeyNotFoundError(f"no private key {_key_name(token, label, key_id)} on token "
                                       f"{token!r}, nor a public one")
            try:
                for obj in (*privs, *pubs):
                    obj.destroy()
            except p11err.PKCS11Error as exc:
                raise KeyStoreError(f"deleting {_key_name(token, label, key_id)} failed: "
                                    f"{type(exc).__name__}") from None
            finally:
                self._keys.pop((token, label, key_id), None)
        return len(privs), len(pubs)


def _generation_spec(algorithm: str) -> str | int:
    """The curve name (EC) or modulus size (RSA) for an algorithm in ALGORITHMS."""
    if algorithm not in ALGORITHMS:
        raise UnsupportedAlgorithmError(f"PKCS#11 tokens here generate {', '.join(ALGORITHMS)}, "
                                        f"not {algorithm}")
    family, size = algorithm.split("-", 1)
    if family == "ec":
        return {"p256": "secp256r1", "p384": "secp384r1", "p521": "secp521r1"}[size]
    return int(size)


# --------------------------------------------------------------------------- instances

_local: dict[str, LocalModule] = {}
_hosted: dict[tuple, object] = {}
_instances_lock = threading.Lock()


def module_for(uri: Pkcs11Uri):
    """The module instance serving `uri`: here, or in a host started with the key's environment."""
    path = os.path.realpath(uri.module_path)
    if not os.path.exists(path):
        raise KeyStoreError(f"PKCS#11 module {uri.module_path} does not exist (check module-path "
                            "or module-name in the key URI)")
    with _instances_lock:
        if all(os.environ.get(name) == value for name, value in uri.module_env):
            if path not in _local:
                _local[path] = LocalModule(path)
            return _local[path]
        key = (path, uri.module_env)
        if key not in _hosted:
            from .pkcs11_host import HostedModule

            _hosted[key] = HostedModule(path, dict(uri.module_env))
        return _hosted[key]


def release_module(uri: Pkcs11Uri) -> None:
    """Stop the module host that serves `uri`'s module configuration, if one runs: its sessions
    and signers end, and the next use starts a new host. A module loaded in this process stays
    (it cannot be unloaded safely). For a caller done with a configuration of its own, such as
    a fleet's SoftHSM, so that its host does not outlive it."""
    key = (os.path.realpath(uri.module_path), uri.module_env)
    with _instances_lock:
        hosted = _hosted.pop(key, None)
    if hosted is not None:
        hosted.close()


# --------------------------------------------------------------------------- the backend

class Pkcs11Signer(Signer):
    """A private key object on a PKCS#11 token."""

    def __init__(self, uri: Pkcs11Uri):
        if uri.token is None:
            raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
        self.uri = uri
        self.description = str(uri)
        self._module = module_for(uri)
        self._ref = (uri.token, uri.object, uri.id)
        spki = self._module.public_key(uri.token, uri.pin(), uri.object, uri.id)
        self._public_key = serialization.load_der_public_key(spki)
        self._algorithm = KeyAlgorithm.of_public_key(self._public_key)

    @property
    def public_key(self):
        return self._public_key

    @property
    def algorithm(self) -> KeyAlgorithm | OtherKeyAlgorithm:
        return self._algorithm

    @property
    def executor(self):
        return self._module.executor

    @property
    def in_process(self) -> bool:
        """True when the module runs in this process, False when a module host serves the key."""
        return isinstance(self._module, LocalModule)

    def _pad(self, pad: Padding) -> str:
        return Padding.PKCS1V15.value if self._algorithm.is_ec else pad.value

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        token, label, key_id = self._ref
        return self._module.sign(token, self.uri.pin(), label, key_id, dgst, hash_name, self._pad(pad))

    async def sign_digest_async(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        if self.in_process:   # a blocking call into the module: on its executor
            return await super().sign_digest_async(dgst, hash_name, pad)
        check_digest_length(dgst, hash_name)
        token, label, key_id = self._ref
        return await self._module.sign_async(token, self.uri.pin(), label, key_id, dgst, hash_name,
                                             self._pad(pad))

    def close(self):
        # Sessions are shared per token within a module instance; nothing per key to free.
        pass


@dataclass(frozen=True)
class Pkcs11KeyInfo:
    label: str
    id_hex: str
    algorithm: str
    sensitive: bool
    extractable: bool


def open_signer(uri: Pkcs11Uri) -> Pkcs11Signer:
    return Pkcs11Signer(uri)


def generate(uri: Pkcs11Uri, algorithm: KeyAlgorithm | OtherKeyAlgorithm) -> Pkcs11Signer:
    """Generate a non-extractable key pair on the token, sharing one CKA_ID."""
    if uri.object is None:
        raise KeyUriError("name the new key with object=LABEL in the pkcs11 URI")
    if uri.token is None:
        raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
    key_id = module_for(uri).generate(uri.token, uri.pin(), uri.object, uri.id, algorithm.value)
    return Pkcs11Signer(uri.with_object(uri.object, key_id))


def key_report(uri: Pkcs11Uri) -> TokenKeyReport:
    """What the token says about where the key the URI names came from and whether it can
    leave: CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE,
    CKA_EXTRACTABLE, with the key's public half (for a manufacturing station)."""
    if uri.token is None:
        raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
    _template(uri.object, uri.id)  # a URI naming no key must not reach the token
    from .key_evidence import TokenKeyReport

    return TokenKeyReport(*module_for(uri).key_attributes(uri.token, uri.pin(), uri.object, uri.id))


def list_keys(uri: Pkcs11Uri) -> list[Pkcs11KeyInfo]:
    """Every private key on the URI's token, with the attributes that matter."""
    if uri.token is None:
        raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
    return [Pkcs11KeyInfo(*row) for row in module_for(uri).list_keys(uri.token, uri.pin())]


def delete(uri: Pkcs11Uri) -> str:
    """Destroy the key pair (private and public objects) the URI names."""
    if uri.token is None:
        raise KeyUriError("the pkcs11 URI names no token (add token=LABEL)")
    _template(uri.object, uri.id)  # a URI naming no key must not reach the token
    private, public = module_for(uri).delete(uri.token, uri.pin(), uri.object, uri.id)
    return (f"{_key_name(uri.token, uri.object, uri.id)}: {private} private and "
            f"{public} public key object(s) destroyed")
