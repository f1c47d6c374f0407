"""TPM 2.0 keys through tpm2-pytss (ESAPI): swtpm in tests, a board's TPM in the field.

Keys are primary keys created in the hierarchy the URI names (endorsement by
default, as TCG "TPM 2.0 Keys for Device Identity and Attestation" does for
IDevIDs) and made persistent with EvictControl at the URI's handle. They are
`fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|sign`: the private
key never leaves the TPM. Their scheme is NULL, so every signature names its
own scheme and hash.

Their authorization value is empty, on purpose: who may use a key is decided by
who may open the TPM (swtpm's owner-only Unix sockets, a real board's device
node). For the swtpm instances pledgeforge runs, a secret auth value would sit
in a file of the same owner as the sockets, readable by exactly the users who
can already open the TPM: a file more to lose, and no boundary more.

One ESAPI context per TCTI string, reused, behind one lock: ESAPI contexts are
not thread-safe, and a TPM without a resource manager (swtpm) holds only three
transient objects, so everything transient we create is flushed at once and
persistent keys are reached through ESYS_TRs that are cached per context.
Async signatures of one TPM queue on one worker thread.
"""

from __future__ import annotations

import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

# The TSS libraries print every TPM error response to stderr themselves (even
# expected ones, such as probing a free handle); our errors say what matters.
# Users who want the TSS log set TSS2_LOG themselves.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from tpm2_pytss import ESAPI, TSS2_Exception  # noqa: E402
from tpm2_pytss.constants import (ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_ECC,  # noqa: E402
                                  TPM2_RC, TPM2_RH, TPM2_ST, TPM2_SU, TPMA_OBJECT, TSS2_RC)
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_PUBLIC, TPMT_PUBLIC, TPMT_SIG_SCHEME,  # noqa: E402
                              TPMT_TK_HASHCHECK)

from .errors import (HandleInUseError, KeyNotFoundError, KeyStoreError, KeyUriError,  # noqa: E402
                     TpmUnreachableError, UnsupportedAlgorithmError)
from .keyuri import TpmUri  # noqa: E402
from .signer import (KeyAlgorithm, OtherKeyAlgorithm, Padding, Signer,  # noqa: E402
                     check_digest_length, ecdsa_raw_to_der)

T = TypeVar("T")

# noDA: the keys have empty authorization, so dictionary-attack protection
# guards nothing, yet each power cut after a DA-protected use counts as a
# failed try; three of them lock every such key out (swtpm: maxTries 3).
KEY_ATTRIBUTES = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                  | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA)
#: an attestation key (TCG IAK): signs only structures the TPM produced itself
RESTRICTED_KEY_ATTRIBUTES = KEY_ATTRIBUTES | TPMA_OBJECT.RESTRICTED

_HASH_ALGS = {"sha256": TPM2_ALG.SHA256, "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512}
# (curve, coordinate bytes, name algorithm) per EC algorithm.
_EC_PARAMS = {KeyAlgorithm.EC_P256: (TPM2_ECC.NIST_P256, 32, TPM2_ALG.SHA256),
              KeyAlgorithm.EC_P384: (TPM2_ECC.NIST_P384, 48, TPM2_ALG.SHA384)}
_RSA_NAME_ALG = {KeyAlgorithm.RSA_2048: TPM2_ALG.SHA256, KeyAlgorithm.RSA_3072: TPM2_ALG.SHA384}
#: what `generate` makes (what swtpm and the TPMs we know implement)
ALGORITHMS = tuple(a.value for a in (*_EC_PARAMS, *_RSA_NAME_ALG))

# TPM 2.0 Part 2 §7.4: the owner persists into 0x81000000-0x817FFFFF, the
# platform (firmware) into 0x81800000-0x81FFFFFF.
_PLATFORM_PERSISTENT_FIRST = 0x81800000
_PERSISTENT_FIRST = 0x81000000
_PERSISTENT_LAST = 0x81FFFFFF

# The digest comes from outside the TPM, so no hash-check ticket exists; an
# unrestricted key signs with the null-hierarchy ticket (TPM 2.0 Part 3 §20.2).
_NULL_TICKET = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)

# Response codes that mean "this object is not there (any more)".
_NO_OBJECT = {TPM2_RC.HANDLE, TPM2_RC.REFERENCE_H0}
# Response codes a TPM gives for a key type or size it does not implement.
_UNSUPPORTED = {TPM2_RC.KEY_SIZE, TPM2_RC.CURVE, TPM2_RC.ASYMMETRIC, TPM2_RC.SCHEME,
                TPM2_RC.HASH, TPM2_RC.KDF, TPM2_RC.SYMMETRIC}
# ESAPI-layer codes after which the context cannot be trusted any more.
_BROKEN_CONTEXT = {TSS2_RC.ESYS_RC_BAD_SEQUENCE, TSS2_RC.ESYS_RC_IO_ERROR}


def _link_broken(exc: TSS2_Exception) -> bool:
    """True when the error is about reaching the TPM, not about the command."""
    return (exc.rc & TSS2_RC.RC_LAYER_MASK) == TSS2_RC.TCTI_RC_LAYER or exc.rc in _BROKEN_CONTEXT


class _Tpm:
    """One TCTI: its lock, its ESAPI context and the ESYS_TRs of persistent keys in it."""

    def __init__(self, tcti: str):
        self.tcti = tcti
        self.lock = threading.RLock()
        self._esys: ESAPI | None = None
        self._persistent: dict[int, ESYS_TR] = {}
        #: one worker (started on first use): async signatures on this TPM wait their turn here
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tpm")

    def _context(self) -> ESAPI:
        if self._esys is None:
            try:
                self._esys = ESAPI(self.tcti)
            except TSS2_Exception as exc:
                raise TpmUnreachableError(
                    f"cannot reach the TPM at TCTI {self.tcti!r} ({exc}); check that the TPM "
                    "(or swtpm) is running, that this user may open it, and the tcti= of the "
                    "key URI") from None
        return self._esys

    def reset(self) -> None:
        """Drop the context; the next call opens a new one."""
        with self.lock:
            esys, self._esys = self._esys, None
            self._persistent.clear()  # ESYS_TRs die with their context
            if esys is not None:
                try:
                    esys.close()
                except TSS2_Exception:
                    pass  # The link is gone already; nothing left to release.

    def run(self, operation: Callable[[ESAPI], T], *, retry: bool = True) -> T:
        """operation(esys) under the lock; reconnect once if the link broke.

        `retry=False` for operations that must not run twice (key creation):
        a broken link then surfaces as TpmUnreachableError.
        """
        with self.lock:
            for attempt in (1, 2):
                esys = self._context()
                try:
                    return operation(esys)
                except TSS2_Exception as exc:
                    if exc.rc == TPM2_RC.INITIALIZE and attempt == 1:
                        # A TPM nobody has started (swtpm without startup flags).
                        esys.startup(TPM2_SU.CLEAR)
                        continue
                    if not _link_broken(exc):
                        raise
                    self.reset()
                    if attempt == 2 or not retry:
                        raise TpmUnreachableError(
                            f"lost the TPM at TCTI {self.tcti!r} ({exc}); check that it is "
                            "still running") from None
        raise AssertionError("unreachable")

    def persistent(self, esys: ESAPI, handle: int, *, refresh: bool = False) -> ESYS_TR:
        """The ESYS_TR of a persistent handle (call inside `run`)."""
        tr = self._persistent.get(handle)
        if tr is not None and not refresh:
            return tr
        self.forget(handle)
        tr = esys.tr_from_tpmpublic(handle)
        self._persistent[handle] = tr
        return tr

    def cached(self, handle: int) -> ESYS_TR | None:
        return self._persistent.get(handle)

    def remember(self, handle: int, tr: ESYS_TR) -> None:
        self.forget(handle)
        self._persistent[handle] = tr

    def forget(self, handle: int) -> None:
        """Close our ESYS_TR of `handle` (the key stays in the TPM)."""
        with self.lock:
            tr = self._persistent.pop(handle, None)
            if tr is not None and self._esys is not None:
                try:
                    self._esys.tr_close(tr)
                except TSS2_Exception:
                    pass  # Only local bookkeeping is lost.


_tpms: dict[str, _Tpm] = {}
_tpms_lock = threading.Lock()


def _tpm_for(tcti: str) -> _Tpm:
    with _tpms_lock:
        if tcti not in _tpms:
            _tpms[tcti] = _Tpm(tcti)
        return _tpms[tcti]


def connection(tcti: str) -> _Tpm:
    """The one shared connection to the TPM at `tcti`: its lock, ESAPI context and handle cache.

    For modules that run TPM commands of their own (tpm_identity): they go
    through `run` like the signers here, so both share one context and one lock.
    """
    return _tpm_for(tcti)


def disconnect(tcti: str | None = None) -> None:
    """Close the ESAPI context of `tcti` (all of them with None); keys stay in the TPM."""
    with _tpms_lock:
        tpms = [_tpms[tcti]] if tcti in _tpms else list(_tpms.values()) if tcti is None else []
    for tpm in tpms:
        tpm.reset()


def _failure(exc: TSS2_Exception, action: str) -> KeyStoreError:
    """A user-facing error for a TPM response that is not about reachability."""
    err = exc.error
    if err == TPM2_RC.LOCKOUT:
        return KeyStoreError(f"{action}: the TPM is in dictionary-attack lockout; wait for it to "
                             "recover or reset it with `tpm2_dictionarylockout -c`")
    if err in (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY):
        return KeyStoreError(f"{action}: the TPM has no free transient slot; another program "
                             "left objects loaded (free them with `tpm2_flushcontext -t`)")
    if err == TPM2_RC.NV_SPACE:
        return KeyStoreError(f"{action}: the TPM has no room for another persistent key; "
                             "evict one with `tpm2_evictcontrol -c HANDLE`")
    if err in (TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL):
        return KeyStoreError(f"{action}: authorization failed (the hierarchy or key has a "
                             "password; pledgeforge uses empty authorization)")
    if err == TPM2_RC.HIERARCHY:
        return KeyStoreError(f"{action}: that hierarchy of the TPM is disabled")
    return KeyStoreError(f"{action} failed: {exc}")


def _evict_hint(uri: TpmUri) -> str:
    return f"TPM2TOOLS_TCTI='{uri.tcti}' tpm2_evictcontrol -C o -c 0x{uri.handle:08x}"


def _require_handle(uri: TpmUri) -> int:
    if uri.handle is None:
        raise KeyUriError("the tpm URI names no key: add handle=0x81...... "
                          "(e.g. tpm:handle=0x81020000?tcti=...)")
    return uri.handle


def _public_key_of(area: TPMT_PUBLIC):
    try:
        return serialization.load_der_public_key(area.to_der())
    except ValueError as exc:
        raise UnsupportedAlgorithmError(f"unsupported TPM key type: {exc}") from None


def _algorithm_name(area: TPMT_PUBLIC) -> str:
    """The KeyAlgorithm spelling, or a descriptive one for keys we do not make."""
    if area.type == TPM2_ALG.RSA:
        bits = area.parameters.rsaDetail.keyBits
        return f"rsa-{bits}"
    if area.type == TPM2_ALG.ECC:
        curve = area.parameters.eccDetail.curveID
        names = {TPM2_ECC.NIST_P256: KeyAlgorithm.EC_P256.value,
                 TPM2_ECC.NIST_P384: KeyAlgorithm.EC_P384.value}
        return names.get(curve, f"ecc-{curve}")
    return str(TPM2_ALG(area.type))


class TpmSigner(Signer):
    """A persistent signing key in a TPM, named by `tpm:handle=0x81...?tcti=...`.

    The ESYS_TR of the handle is cached per TCTI; if another program replaces
    the key under the same handle while this signer lives, open a new signer.
    """

    def __init__(self, uri: TpmUri):
        self.uri = uri
        self.handle = _require_handle(uri)
        self.description = str(uri)
        self._tpm = _tpm_for(uri.tcti)

        def read(esys: ESAPI) -> TPMT_PUBLIC:
            # A fresh ESYS_TR: whatever was cached may describe an older key.
            tr = self._tpm.persistent(esys, self.handle, refresh=True)
            return esys.read_public(tr)[0].publicArea

        try:
            area = self._tpm.run(read)
        except TSS2_Exception as exc:
            if exc.error in _NO_OBJECT:
                raise KeyNotFoundError(
                    f"no key at TPM handle 0x{self.handle:08x} ({uri.tcti}); create one with "
                    "`pledgeforge keys generate` or check the handle") from None
            raise _failure(exc, f"reading TPM key 0x{self.handle:08x}") from None
        attrs = area.objectAttributes
        if not attrs & TPMA_OBJECT.SIGN_ENCRYPT or attrs & TPMA_OBJECT.RESTRICTED:
            raise KeyStoreError(f"the object at TPM handle 0x{self.handle:08x} is not an "
                                f"unrestricted signing key (attributes {attrs})")
        self._public_key = _public_key_of(area)
        self._algorithm = KeyAlgorithm.of_public_key(self._public_key)
        self.attributes = str(attrs)
        self._schemes: dict[tuple[str, Padding], TPMT_SIG_SCHEME] = {}

    @property
    def public_key(self):
        return self._public_key

    @property
    def algorithm(self) -> KeyAlgorithm | OtherKeyAlgorithm:
        return self._algorithm

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._tpm.executor

    def _scheme(self, hash_name: str, pad: Padding) -> TPMT_SIG_SCHEME:
        """The per-signature scheme (the key's own is NULL), built once per kind."""
        if self._algorithm.is_ec:
            pad = Padding.PKCS1V15  # RSA padding means nothing to an EC key
        scheme = self._schemes.get((hash_name, pad))
        if scheme is None:
            if self._algorithm.is_ec:
                alg = TPM2_ALG.ECDSA
            else:
                alg = TPM2_ALG.RSAPSS if pad is Padding.PSS else TPM2_ALG.RSASSA
            scheme = TPMT_SIG_SCHEME(scheme=alg)
            scheme.details.any.hashAlg = _HASH_ALGS[hash_name]
            self._schemes[(hash_name, pad)] = scheme
        return scheme

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        scheme = self._scheme(hash_name, pad)

        def sign(esys: ESAPI):
            tr = self._tpm.persistent(esys, self.handle)
            return esys.sign(tr, TPM2B_DIGEST(dgst), scheme, _NULL_TICKET)

        try:
            signature = self._tpm.run(sign)
        except TSS2_Exception as exc:
            if exc.error in _NO_OBJECT:
                self._tpm.forget(self.handle)
                raise KeyNotFoundError(f"the key at TPM handle 0x{self.handle:08x} "
                                       f"({self.uri.tcti}) is gone") from None
            if exc.error in _UNSUPPORTED:
                raise UnsupportedAlgorithmError(
                    f"TPM key 0x{self.handle:08x} cannot sign with {self._algorithm.value}/"
                    f"{hash_name}/{pad.value} ({exc})") from None
            raise _failure(exc, f"signing with TPM key 0x{self.handle:08x}") from None
        if self._algorithm.is_ec:
            # The TPM may drop leading zero bytes of r and s: pad each to the coordinate size.
            size = (self._public_key.curve.key_size + 7) // 8
            r = bytes(signature.signature.ecdsa.signatureR)
            s = bytes(signature.signature.ecdsa.signatureS)
            return ecdsa_raw_to_der(r.rjust(size, b"\0") + s.rjust(size, b"\0"))
        if pad is Padding.PSS:
            return bytes(signature.signature.rsapss.sig)
        return bytes(signature.signature.rsassa.sig)

    def close(self) -> None:
        # The ESYS_TR is shared per TCTI by every signer of this handle; it
        # costs no TPM resource and goes with `disconnect()`.
        pass


def open_signer(uri: TpmUri) -> TpmSigner:
    return TpmSigner(uri)


def _template(algorithm: KeyAlgorithm, *, restricted: bool = False) -> TPM2B_PUBLIC:
    """A signing-key template with a random `unique` field.

    A primary key is derived from the hierarchy seed and its template, so the
    random `unique` is what makes two keys of one hierarchy differ.

    An unrestricted key has scheme NULL (each signature names its own). A
    `restricted` key (an attestation key such as the IAK) signs only what the
    TPM itself produced (TPMS_ATTEST), and the TPM requires it to fix its
    scheme: ECDSA or RSASSA with the hash of its name algorithm.
    """
    attributes = RESTRICTED_KEY_ATTRIBUTES if restricted else KEY_ATTRIBUTES
    area = TPMT_PUBLIC(objectAttributes=attributes)
    if algorithm.is_ec:
        curve, size, name_alg = _EC_PARAMS[algorithm]
        area.type = TPM2_ALG.ECC
        area.nameAlg = name_alg
        detail = area.parameters.eccDetail
        detail.symmetric.algorithm = TPM2_ALG.NULL
        detail.scheme.scheme = TPM2_ALG.ECDSA if restricted else TPM2_ALG.NULL
        detail.curveID = curve
        detail.kdf.scheme = TPM2_ALG.NULL
        area.unique.ecc.x = secrets.token_bytes(size)
        area.unique.ecc.y = secrets.token_bytes(size)
    else:
        area.type = TPM2_ALG.RSA
        area.nameAlg = _RSA_NAME_ALG[algorithm]
        detail = area.parameters.rsaDetail
        detail.symmetric.algorithm = TPM2_ALG.NULL
        detail.scheme.scheme = TPM2_ALG.RSASSA if restricted else TPM2_ALG.NULL
        detail.keyBits = algorithm.rsa_bits
        detail.exponent = 0  # 65537
        area.unique.rsa = secrets.token_bytes(32)
    if restricted:
        detail.scheme.details.anySig.hashAlg = area.nameAlg
    return TPM2B_PUBLIC(publicArea=area)


def _handle_in_use(esys: ESAPI, handle: int) -> bool:
    _, data = esys.get_capability(TPM2_CAP.HANDLES, handle, 1)
    return any(h == handle for h in data.data.handles)


def create_persistent_key(uri: TpmUri, algorithm: KeyAlgorithm, *,
                          restricted: bool = False) -> TPM2B_PUBLIC:
    """Create a signing key as a primary key of the URI's hierarchy, persist it at uri.handle,
    and return its public area (see `_template` for `restricted`)."""
    handle = _require_handle(uri)
    if handle >= _PLATFORM_PERSISTENT_FIRST:
        # Only platform-hierarchy objects may live there, and only firmware owns that hierarchy.
        raise KeyUriError(f"TPM handle 0x{handle:08x} is in the platform range; give the key a "
                          "handle in 0x81000000-0x817fffff (e.g. 0x81020000)")
    tpm = _tpm_for(uri.tcti)
    template = _template(algorithm, restricted=restricted)
    hierarchy = ESYS_TR.ENDORSEMENT if uri.hierarchy == "endorsement" else ESYS_TR.OWNER
    in_use = HandleInUseError(f"TPM handle 0x{handle:08x} ({uri.tcti}) already holds an object; "
                              f"choose another handle or free it with `{_evict_hint(uri)}`")

    def create(esys: ESAPI) -> TPM2B_PUBLIC:
        transient, public = esys.create_primary(None, template, hierarchy)[:2]
        try:
            persistent = esys.evict_control(ESYS_TR.OWNER, transient, handle)
        finally:
            esys.flush_context(transient)
        tpm.remember(handle, persistent)
        return public

    with tpm.lock:
        try:
            if tpm.run(lambda esys: _handle_in_use(esys, handle)):
                raise in_use
            return tpm.run(create, retry=False)
        except TSS2_Exception as exc:
            if exc.error == TPM2_RC.NV_DEFINED:
                raise in_use from None
            if exc.error in _UNSUPPORTED:
                raise UnsupportedAlgorithmError(
                    f"the TPM at {uri.tcti} cannot create {algorithm.value} keys ({exc})") from None
            raise _failure(exc, f"creating a {algorithm.value} key at TPM handle "
                                f"0x{handle:08x}") from None


def generate(uri: TpmUri, algorithm: KeyAlgorithm) -> TpmSigner:
    """Create a signing key as a primary key of the URI's hierarchy and persist it at uri.handle."""
    create_persistent_key(uri, algorithm)
    return TpmSigner(uri)


def delete(uri: TpmUri) -> str:
    """Evict the persistent key at uri.handle (TPM2_EvictControl): the TPM forgets it for good."""
    handle = _require_handle(uri)
    if handle >= _PLATFORM_PERSISTENT_FIRST:
        raise KeyUriError(f"TPM handle 0x{handle:08x} is in the platform range; only the "
                          "platform firmware may evict it")
    tpm = _tpm_for(uri.tcti)

    def evict(esys: ESAPI) -> None:
        tr = tpm.persistent(esys, handle, refresh=True)
        esys.evict_control(ESYS_TR.OWNER, tr, handle)

    with tpm.lock:
        try:
            tpm.run(evict, retry=False)
        except TSS2_Exception as exc:
            if exc.error in _NO_OBJECT:
                raise KeyNotFoundError(f"no key at TPM handle 0x{handle:08x} ({uri.tcti})") from None
            raise _failure(exc, f"evicting TPM key 0x{handle:08x}") from None
        finally:
            # ESAPI keeps the evicted object's ESYS_TR; it names nothing now.
            tpm.forget(handle)
    return f"TPM key 0x{handle:08x} ({uri.tcti}) evicted"


@dataclass(frozen=True)
class TpmKeyInfo:
    """One persistent object of a TPM."""

    handle: int
    algorithm: str
    attributes: str  # tpm2-tools spelling, e.g. "fixedtpm|fixedparent|...|sign"

    @property
    def handle_hex(self) -> str:
        return f"0x{self.handle:08x}"

    @property
    def attribute_set(self) -> frozenset[str]:
        return frozenset(self.attributes.split("|")) if self.attributes else frozenset()

    @property
    def can_sign(self) -> bool:
        """An unrestricted signing key, usable as a TpmSigner."""
        return "sign" in self.attribute_set and "restricted" not in self.attribute_set

    @property
    def non_extractable(self) -> bool:
        return {"fixedtpm", "fixedparent"} <= self.attribute_set


def list_keys(uri: TpmUri) -> list[TpmKeyInfo]:
    """Every persistent object in the TPM the URI's TCTI reaches (the handle is ignored)."""
    tpm = _tpm_for(uri.tcti)

    def handles(esys: ESAPI) -> list[int]:
        found: list[int] = []
        start = _PERSISTENT_FIRST
        while start <= _PERSISTENT_LAST:
            more, data = esys.get_capability(TPM2_CAP.HANDLES, start, 64)
            batch = [int(h) for h in data.data.handles]
            found += [h for h in batch if h <= _PERSISTENT_LAST]
            if not more or not batch:
                break
            start = batch[-1] + 1
        return found

    def describe(esys: ESAPI, handle: int) -> TpmKeyInfo:
        cached = tpm.cached(handle)
        tr = cached if cached is not None else esys.tr_from_tpmpublic(handle)
        try:
            area = esys.read_public(tr)[0].publicArea
        finally:
            if cached is None:
                esys.tr_close(tr)
        return TpmKeyInfo(handle, _algorithm_name(area), str(area.objectAttributes))

    out = []
    try:
        with tpm.lock:
            for handle in tpm.run(handles):
                try:
                    out.append(tpm.run(lambda esys: describe(esys, handle)))
                except TSS2_Exception as exc:
                    if exc.error not in _NO_OBJECT:  # evicted meanwhile by someone else
                        raise
    except TSS2_Exception as exc:
        raise _failure(exc, f"listing the keys of the TPM at {uri.tcti}") from None
    return out


__all__ = ["TpmSigner", "TpmKeyInfo", "ALGORITHMS", "open_signer", "generate", "list_keys", "delete",
           "disconnect", "connection", "create_persistent_key", "KEY_ATTRIBUTES",
           "RESTRICTED_KEY_ATTRIBUTES"]
