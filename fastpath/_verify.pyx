# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Bulk verification of CMS SignedData and X.509 certificates over OpenSSL libcrypto.

Everything between receiving a batch and returning its results runs without
the GIL, in C: a bounds-checked DER reader walks each item in place (no Python
object per field), certificates are parsed and keyed by their DER once per
batch, and signatures go to libcrypto with precomputed digests and reused
verify contexts. The checks and their order are those of the pure-Python
reference (pledgeforge.hsm.cms.verify_cms and hsm.chain.build_chain), so both
give the same result code for every item; the Python API lives in
pledgeforge.fastpath.

This module is the engine: the batch, its certificate cache, signatures, paths
to the trust anchors and the Python API. It reads DER through _der, certificates
through _x509 and SignedData through _cms; the verification profile and the
result codes come from _profile (generated from hsm/verification_profile.py and
fastpath/results.py when the extension is built).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from ._cms cimport Cms, cms_parse, cms_signature_scheme, find_signer, v1_attr_cert_readable
from ._der cimport Cursor, Tlv, cur_init, cur_next, der_framed, oid_find
from ._libcrypto cimport *
from ._profile cimport (H_COUNT, MAX_DEPTH, N_CONTENT_TYPES, PF_CONTENT_TYPES,
                        PF_HASH_LIBCRYPTO_NAMES, PF_NAME_TEXT, PF_PROFILE_FINGERPRINT,
                        R_BAD_SIGNATURE, R_DIGEST_MISMATCH, R_EXPIRED, R_MALFORMED, R_OK,
                        R_UNEXPECTED_CONTENT_TYPE, R_UNTRUSTED_SIGNER, S_ED448, S_ED25519,
                        S_RSA_PKCS1, S_RSA_PSS, S_UNSUPPORTED, TEXT_UTF16BE, TEXT_UTF32BE)
from ._x509 cimport (CS_PARSING, CS_READY, K_BAD, K_UNSUPPORTED, PAIR_SLOTS, Cert, PairSlot,
                     cert_load_key, cert_parse, cert_read_extensions, key_fits)


# The engine's own bounds and tuning, not part of the verification profile.
cdef enum:
    CHAIN_BUDGET = 4096     # path-building steps per item: hostile inputs cannot hang a worker
    CTX_SLOTS = 64          # cached verify contexts per worker
    CLAIM = 8               # items a worker claims at once


cdef extern from *:
    """
    #include <stdint.h>
    #define PF_FNV_OFFSET UINT64_C(0xcbf29ce484222325)
    #define PF_FNV_PRIME UINT64_C(0x100000001b3)
    """
    uint64_t PF_FNV_OFFSET
    uint64_t PF_FNV_PRIME


# --------------------------------------------------------------------------- the batch engine

cdef struct CtxSlot:
    uint64_t cert_id
    int combo
    EVP_PKEY_CTX *ctx


cdef struct Worker:
    void *engine
    EVP_MD_CTX *md
    EVP_MD_CTX *dv
    CtxSlot ctxs[CTX_SLOTS]
    uint8_t *scratch
    size_t scratch_cap
    Cert **embedded
    size_t embedded_cap


cdef struct ItemOut:
    int code
    const uint8_t *serial
    size_t serial_len
    int serial_tag
    size_t content_off
    size_t content_len


cdef struct EngineC:
    pthread_mutex_t lock
    pthread_cond_t ready
    Cert **table
    size_t cap
    size_t count
    uint64_t next_id
    uint64_t batch
    Cert **anchors
    size_t n_anchors
    Cert **extras
    size_t n_extras
    EVP_MD *mds[H_COUNT]
    bint check_time
    int64_t at_us
    # the current batch
    const uint8_t **items
    size_t *lens
    ItemOut *out
    size_t n_items
    size_t next_item
    int mode
    # counters for tests and benchmarks
    uint64_t cert_parses
    uint64_t cert_verifies


cdef uint64_t der_hash(const uint8_t *p, size_t n) noexcept nogil:
    """FNV-1a over 8-byte words: only a table index, entries compare the full DER."""
    cdef uint64_t h = PF_FNV_OFFSET ^ n
    cdef uint64_t w
    cdef size_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * PF_FNV_PRIME
        h ^= h >> 29
        i += 8
    while i < n:
        h = (h ^ p[i]) * PF_FNV_PRIME
        i += 1
    return h ^ (h >> 32)


cdef int table_grow(EngineC *e) noexcept nogil:
    cdef size_t ncap = e.cap * 2 if e.cap else 1024
    cdef Cert **nt = <Cert **>calloc(ncap, sizeof(Cert *))
    cdef size_t i, j
    if nt == NULL:
        return -1
    for i in range(e.cap):
        if e.table[i] != NULL:
            j = e.table[i].hash & (ncap - 1)
            while nt[j] != NULL:
                j = (j + 1) & (ncap - 1)
            nt[j] = e.table[i]
    free(e.table)
    e.table = nt
    e.cap = ncap
    return 0


cdef void cert_free(Cert *c) noexcept nogil:
    if c.pkey != NULL:
        EVP_PKEY_free(c.pkey)
    free(c)


cdef Cert *cert_get(EngineC *e, const uint8_t *der, size_t n) noexcept nogil:
    """The batch's entry for this DER, parsed once however many threads ask; NULL if out of memory."""
    cdef uint64_t h = der_hash(der, n)
    cdef size_t j
    cdef Cert *c
    pthread_mutex_lock(&e.lock)
    if e.count * 2 >= e.cap and table_grow(e) < 0:
        pthread_mutex_unlock(&e.lock)
        return NULL
    j = h & (e.cap - 1)
    while True:
        c = e.table[j]
        if c == NULL:
            break
        if c.hash == h and c.der_len == n and memcmp(c.der, der, n) == 0:
            c.last_used = e.batch
            while c.state == CS_PARSING:
                pthread_cond_wait(&e.ready, &e.lock)
            pthread_mutex_unlock(&e.lock)
            return c
        j = (j + 1) & (e.cap - 1)
    c = <Cert *>calloc(1, sizeof(Cert) + n)
    if c == NULL:
        pthread_mutex_unlock(&e.lock)
        return NULL
    c.der = (<uint8_t *>c) + sizeof(Cert)
    memcpy(c.der, der, n)
    c.der_len = n
    c.hash = h
    e.next_id += 1
    c.id = e.next_id
    c.last_used = e.batch
    c.state = CS_PARSING
    c.anchor_index = -1
    e.table[j] = c
    e.count += 1
    e.cert_parses += 1
    pthread_mutex_unlock(&e.lock)

    # Parse and load the key outside the lock; others wait on `ready`.
    if cert_parse(c) == 0:
        cert_read_extensions(c)
        cert_load_key(c)

    pthread_mutex_lock(&e.lock)
    c.state = CS_READY
    pthread_cond_broadcast(&e.ready)
    pthread_mutex_unlock(&e.lock)
    return c


cdef void table_evict(EngineC *e) noexcept nogil:
    """Drop certificates the last batch did not use, so memory stays flat over a stream."""
    cdef size_t i
    cdef Cert **keep = <Cert **>malloc(e.count * sizeof(Cert *) + 1)
    cdef size_t nkeep = 0
    if keep == NULL:
        return
    for i in range(e.cap):
        if e.table[i] != NULL:
            if e.table[i].pinned or e.table[i].last_used == e.batch:
                keep[nkeep] = e.table[i]
                nkeep += 1
            else:
                cert_free(e.table[i])
            e.table[i] = NULL
    e.count = 0
    for i in range(nkeep):
        insert_existing(e, keep[i])
    free(keep)


cdef void insert_existing(EngineC *e, Cert *c) noexcept nogil:
    cdef size_t j = c.hash & (e.cap - 1)
    while e.table[j] != NULL:
        j = (j + 1) & (e.cap - 1)
    e.table[j] = c
    e.count += 1


# --------------------------------------------------------------------------- signatures

cdef EVP_PKEY_CTX *verify_ctx(Worker *w, Cert *key_cert, int scheme, int hash_id, int mgf,
                              int salt) noexcept nogil:
    """A verify context for this key and scheme, reused across items by this worker."""
    cdef EngineC *e = <EngineC *>w.engine
    cdef int combo = ((scheme * 16 + hash_id) * 16 + mgf) * 70000 + (salt + 2)
    cdef size_t slot = (key_cert.id * 31 + <uint64_t>combo) % CTX_SLOTS
    cdef CtxSlot *s = &w.ctxs[slot]
    cdef EVP_PKEY_CTX *ctx
    if s.ctx != NULL and s.cert_id == key_cert.id and s.combo == combo:
        return s.ctx
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key_cert.pkey, NULL)
    if ctx == NULL:
        return NULL
    if EVP_PKEY_verify_init(ctx) <= 0 or EVP_PKEY_CTX_set_signature_md(ctx, e.mds[hash_id]) <= 0:
        EVP_PKEY_CTX_free(ctx)
        return NULL
    if scheme == S_RSA_PKCS1:
        if EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0:
            EVP_PKEY_CTX_free(ctx)
            return NULL
    elif scheme == S_RSA_PSS:
        if EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 or \
                EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, e.mds[mgf]) <= 0 or \
                EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, salt) <= 0:
            EVP_PKEY_CTX_free(ctx)
            return NULL
    if s.ctx != NULL:
        EVP_PKEY_CTX_free(s.ctx)
    s.ctx = ctx
    s.cert_id = key_cert.id
    s.combo = combo
    return ctx


cdef bint digest_into(Worker *w, int hash_id, uint8_t first, const uint8_t *data, size_t n,
                      uint8_t *out, unsigned int *out_len) noexcept nogil:
    """Hash data, with its first octet replaced by `first` (the SET OF re-tagging)."""
    cdef EngineC *e = <EngineC *>w.engine
    if EVP_DigestInit_ex(w.md, e.mds[hash_id], NULL) <= 0:
        return False
    if n > 0:
        if EVP_DigestUpdate(w.md, &first, 1) <= 0 or EVP_DigestUpdate(w.md, data + 1, n - 1) <= 0:
            return False
    return EVP_DigestFinal_ex(w.md, out, out_len) > 0


cdef bint verify_with(Worker *w, Cert *key_cert, int scheme, int hash_id, int mgf, int salt,
                      uint8_t first, const uint8_t *data, size_t n,
                      const uint8_t *sig, size_t sig_len) noexcept nogil:
    """One signature over data (first octet replaced by `first`) with key_cert's public key."""
    cdef uint8_t dg[64]
    cdef unsigned int dlen = 0
    cdef EVP_PKEY_CTX *ctx
    cdef int rc
    if key_cert.pkey == NULL:
        return False
    if scheme == S_ED25519 or scheme == S_ED448:
        if n > w.scratch_cap:
            free(w.scratch)
            w.scratch = <uint8_t *>malloc(n)
            w.scratch_cap = n if w.scratch != NULL else 0
            if w.scratch == NULL:
                return False
        memcpy(w.scratch, data, n)
        if n > 0:
            w.scratch[0] = first
        # OpenSSL 3.0 refuses to re-initialise a context a one-shot EVP_DigestVerify
        # has finished with (the second Ed25519 check on a worker would fail): reset it.
        EVP_MD_CTX_reset(w.dv)
        rc = EVP_DigestVerifyInit(w.dv, NULL, NULL, NULL, key_cert.pkey)
        if rc > 0:
            rc = EVP_DigestVerify(w.dv, sig, sig_len, w.scratch, n)
        if rc <= 0:
            ERR_clear_error()
        return rc == 1
    if not digest_into(w, hash_id, first, data, n, dg, &dlen):
        ERR_clear_error()
        return False
    ctx = verify_ctx(w, key_cert, scheme, hash_id, mgf, salt)
    if ctx == NULL:
        ERR_clear_error()
        return False
    rc = EVP_PKEY_verify(ctx, sig, sig_len, dg, dlen)
    if rc != 1:
        ERR_clear_error()
    return rc == 1


cdef int signed_by_uncached(Worker *w, Cert *child, Cert *parent) noexcept nogil:
    """The certificate signature check the reference makes once names match: 1, 0, or -1
    where the reference raises rather than answer (see cert_signature_scheme)."""
    cdef EngineC *e = <EngineC *>w.engine
    # Inner and outer signature algorithms must agree.
    if child.tbs_sigalg.tlen != child.sigalg.tlen or \
            memcmp(child.tbs_sigalg.hdr, child.sigalg.hdr, child.sigalg.tlen) != 0:
        return 0
    if parent.key_kind == K_UNSUPPORTED:
        return -1
    if parent.key_kind == K_BAD or child.scheme == S_UNSUPPORTED:
        return 0
    if not key_fits(child.scheme, parent.key_kind):
        return 0
    if child.sig_uncheckable:
        return -1
    pf_count(&e.cert_verifies)
    if child.scheme == S_RSA_PSS:
        return 1 if verify_with(w, parent, S_RSA_PSS, child.sig_hash, child.pss_mgf,
                                <int>child.pss_salt, child.tbs.hdr[0], child.tbs.hdr,
                                child.tbs.tlen, child.sig, child.sig_len) else 0
    return 1 if verify_with(w, parent, child.scheme, child.sig_hash, 0, 0, child.tbs.hdr[0],
                            child.tbs.hdr, child.tbs.tlen, child.sig, child.sig_len) else 0


cdef int signed_by(Worker *w, Cert *child, Cert *parent) noexcept nogil:
    """signed_by_uncached, computed once per (child, parent) pair for the whole batch."""
    cdef EngineC *e = <EngineC *>w.engine
    cdef PairSlot *slot = NULL
    cdef int i, r
    pthread_mutex_lock(&e.lock)
    while True:
        slot = NULL
        for i in range(PAIR_SLOTS):
            if child.pairs[i].state != 0 and child.pairs[i].parent_id == parent.id:
                slot = &child.pairs[i]
                break
        if slot == NULL or slot.state == 2:
            break
        pthread_cond_wait(&e.ready, &e.lock)
    if slot != NULL:
        r = slot.result
        pthread_mutex_unlock(&e.lock)
        return r
    for i in range(PAIR_SLOTS):
        if child.pairs[i].state == 0:
            slot = &child.pairs[i]
            break
    if slot == NULL:
        # All slots hold finished results (parents from earlier batches): recycle one.
        slot = &child.pairs[child.pair_next % PAIR_SLOTS]
        child.pair_next += 1
        if slot.state != 2:
            slot = NULL
    if slot != NULL:
        slot.state = 1
        slot.parent_id = parent.id
    pthread_mutex_unlock(&e.lock)
    r = signed_by_uncached(w, child, parent)
    if slot != NULL:
        pthread_mutex_lock(&e.lock)
        slot.result = r
        slot.state = 2
        pthread_cond_broadcast(&e.ready)
        pthread_mutex_unlock(&e.lock)
    return r


# --------------------------------------------------------------------------- chains

cdef enum:
    CH_FOUND = 1
    CH_NONE = 0
    CH_UNREADABLE = -1      # the reference would fail reading a certificate on this path


cdef struct Chain:
    Worker *w
    Cert **pool
    size_t n_pool
    Cert *path[MAX_DEPTH + 1]
    int steps
    bint time_problem


cdef int issued_by(Chain *ch, Cert *child, Cert *parent) noexcept nogil:
    """hsm.chain._issued_by: names compared as text first (both must decode), then the
    exact issuer/subject encodings and the signature, then the key identifiers."""
    cdef int r
    if not child.issuer_decodable or not parent.subject_decodable:
        return CH_UNREADABLE
    if child.issuer.tlen != parent.subject.tlen or \
            memcmp(child.issuer.hdr, parent.subject.hdr, child.issuer.tlen) != 0:
        return CH_NONE
    r = signed_by(ch.w, child, parent)
    if r != 1:
        return r
    # OpenSSL's X509_check_akid (X509_V_ERR_AKID_SKID_MISMATCH): the child's
    # authorityKeyIdentifier keyIdentifier must equal the parent's subjectKeyIdentifier
    # when both are present. The reference reads the parent's extensions only when the
    # child names a key.
    if not child.ext_ok:
        return CH_UNREADABLE
    if child.has_akid:
        if not parent.ext_ok:
            return CH_UNREADABLE
        if parent.has_ski and (parent.ski_len != child.akid_len or
                               memcmp(parent.ski, child.akid, child.akid_len) != 0):
            return CH_NONE
    return 1


cdef inline bint in_time(EngineC *e, Cert *c) noexcept nogil:
    return not (e.at_us < c.not_before * 1000000 or e.at_us > c.not_after * 1000000)


cdef int chain_extend(Chain *ch, int plen) noexcept nogil:
    """hsm.chain.build_chain's search, in the same order, over cached certificates."""
    cdef EngineC *e = <EngineC *>ch.w.engine
    cdef Cert *tip = ch.path[plen - 1]
    cdef Cert *a
    cdef Cert *cand
    cdef size_t i, j
    cdef int r = 0, k
    cdef bint same, problem
    ch.steps += 1
    if ch.steps > CHAIN_BUDGET:
        return CH_NONE
    for i in range(e.n_anchors):
        a = e.anchors[i]
        same = tip == a
        if not same:
            r = issued_by(ch, tip, a)
            if r == CH_UNREADABLE:
                return r
        if same or r == 1:
            if not e.check_time:
                return CH_FOUND
            problem = False
            for k in range(plen):
                if not in_time(e, ch.path[k]):
                    problem = True
                    if not ch.path[k].subject_decodable:
                        return CH_UNREADABLE
            if not same and not in_time(e, a):
                problem = True
            if not problem:
                return CH_FOUND
            ch.time_problem = True
    if plen >= MAX_DEPTH:
        return CH_NONE
    for i in range(ch.n_pool):
        cand = ch.pool[i]
        for j in range(plen):
            if ch.path[j] == cand:
                break
        else:
            if not cand.ext_ok:
                return CH_UNREADABLE
            if not cand.is_ca:
                continue
            r = issued_by(ch, tip, cand)
            if r == CH_UNREADABLE:
                return r
            if r == 1:
                ch.path[plen] = cand
                r = chain_extend(ch, plen + 1)
                if r != CH_NONE:
                    return r
    return CH_NONE


cdef int chain_result(Worker *w, Cert *leaf, Cert **embedded, size_t n_embedded) noexcept nogil:
    """OK, EXPIRED, UNTRUSTED_SIGNER, or MALFORMED where the reference cannot read a
    certificate it has to look at."""
    cdef EngineC *e = <EngineC *>w.engine
    cdef Chain ch
    cdef size_t i, j, n = 0
    cdef Cert **pool
    cdef Cert *c
    cdef int r
    if e.n_anchors == 0:
        return R_UNTRUSTED_SIGNER
    pool = <Cert **>malloc((n_embedded + e.n_extras + 1) * sizeof(Cert *))
    if pool == NULL:
        return R_MALFORMED
    # Embedded certificates, then the extra ones; the leaf and repeats left out.
    for i in range(n_embedded + e.n_extras):
        c = embedded[i] if i < n_embedded else e.extras[i - n_embedded]
        if c == leaf:
            continue
        for j in range(n):
            if pool[j] == c:
                break
        else:
            pool[n] = c
            n += 1
    ch.w = w
    ch.pool = pool
    ch.n_pool = n
    ch.path[0] = leaf
    ch.steps = 0
    ch.time_problem = False
    r = chain_extend(&ch, 1)
    free(pool)
    if r == CH_FOUND:
        return R_OK
    if r == CH_UNREADABLE:
        return R_MALFORMED
    if not ch.time_problem and not leaf.subject_decodable:
        return R_MALFORMED      # the reference names the leaf in its error
    return R_EXPIRED if ch.time_problem else R_UNTRUSTED_SIGNER


# --------------------------------------------------------------------------- items and workers

cdef int cms_item(Worker *w, const uint8_t *der, size_t n, ItemOut *out) noexcept nogil:
    """Verify one SignedData; the result code, with serial and content location filled in."""
    cdef EngineC *e = <EngineC *>w.engine
    cdef Cms m
    cdef Cursor c
    cdef Tlv t
    cdef size_t ne = 0
    cdef int k, scheme, hash_id
    cdef Cert *signer = NULL
    cdef Cert *cert
    cdef uint8_t dg[64]
    cdef unsigned int dlen
    memset(&m, 0, sizeof(Cms))
    if not der_framed(der, n) or cms_parse(der, n, &m) < 0:
        return R_MALFORMED
    # Embedded certificates: every one must read as a certificate.
    if m.certs.tag:
        cur_init(&c, &m.certs)
        while True:
            k = cur_next(&c, &t)
            if k == 0:
                break
            if k < 0:
                return R_MALFORMED
            if t.tag != 0x30:
                if t.tag < 0xa0 or t.tag > 0xa3:
                    return R_MALFORMED
                if t.tag == 0xa1 and not v1_attr_cert_readable(&t):
                    return R_MALFORMED
                continue                                # attribute certificates: ignored
            cert = cert_get(e, t.hdr, t.tlen)
            if cert == NULL or not cert.ok:
                return R_MALFORMED
            if ne == w.embedded_cap:
                w.embedded_cap = w.embedded_cap * 2 + 8
                w.embedded = <Cert **>realloc(w.embedded, w.embedded_cap * sizeof(Cert *))
                if w.embedded == NULL:
                    w.embedded_cap = 0
                    return R_MALFORMED
            w.embedded[ne] = cert
            ne += 1
    if find_signer(&m, w.embedded, ne, e.extras, e.n_extras, &signer) < 0:
        return R_MALFORMED
    out.serial = signer.sn_attr
    out.serial_len = signer.sn_len
    out.serial_tag = signer.sn_tag
    out.content_off = <size_t>(m.econtent.val - der)
    out.content_len = m.econtent.vlen
    if signer.key_kind == K_BAD or signer.key_kind == K_UNSUPPORTED:
        return R_MALFORMED                              # the signer's key does not load
    if cms_signature_scheme(&m, &scheme, &hash_id) < 0:
        return R_MALFORMED
    if not key_fits(scheme, signer.key_kind):
        return R_BAD_SIGNATURE

    if oid_find(&m.econtent_type, PF_CONTENT_TYPES, N_CONTENT_TYPES) < 0:
        return R_UNEXPECTED_CONTENT_TYPE
    if m.attr_ct.vlen != m.econtent_type.vlen or \
            memcmp(m.attr_ct.val, m.econtent_type.val, m.attr_ct.vlen) != 0:
        return R_UNEXPECTED_CONTENT_TYPE

    if not digest_into(w, m.digest_hash, m.econtent.val[0] if m.econtent.vlen else 0,
                       m.econtent.val, m.econtent.vlen, dg, &dlen):
        return R_MALFORMED
    if dlen != m.attr_md.vlen or memcmp(dg, m.attr_md.val, dlen) != 0:
        return R_DIGEST_MISMATCH
    if m.signature.tag != 0x04:
        return R_MALFORMED

    if not verify_with(w, signer, scheme, hash_id, hash_id, -2, 0x31, m.signed_attrs.hdr,
                       m.signed_attrs.tlen, m.signature.val, m.signature.vlen):
        return R_BAD_SIGNATURE

    return chain_result(w, signer, w.embedded, ne)


cdef int cert_item(Worker *w, const uint8_t *der, size_t n, ItemOut *out) noexcept nogil:
    """Verify one certificate against the anchors (and extra certificates)."""
    cdef EngineC *e = <EngineC *>w.engine
    cdef Cert *c
    if not der_framed(der, n):
        return R_MALFORMED
    c = cert_get(e, der, n)
    if c == NULL or not c.ok:
        return R_MALFORMED
    if c.subject_decodable:
        # The reference reads the serialNumber through the subject: none when that
        # cannot be read.
        out.serial = c.sn_attr
        out.serial_len = c.sn_len
        out.serial_tag = c.sn_tag
    out.content_off = 0
    out.content_len = n
    return chain_result(w, c, NULL, 0)


cdef void *worker_main(void *arg) noexcept nogil:
    cdef Worker *w = <Worker *>arg
    cdef EngineC *e = <EngineC *>w.engine
    cdef size_t start, i, end
    cdef ItemOut *o
    while True:
        start = pf_claim(&e.next_item, CLAIM)
        if start >= e.n_items:
            break
        end = start + CLAIM
        if end > e.n_items:
            end = e.n_items
        for i in range(start, end):
            o = &e.out[i]
            memset(o, 0, sizeof(ItemOut))
            if e.mode == 0:
                o.code = cms_item(w, e.items[i], e.lens[i], o)
            else:
                o.code = cert_item(w, e.items[i], e.lens[i], o)
    return NULL


cdef int worker_init(Worker *w, EngineC *e) noexcept nogil:
    memset(w, 0, sizeof(Worker))
    w.engine = e
    w.md = EVP_MD_CTX_new()
    w.dv = EVP_MD_CTX_new()
    return 0 if w.md != NULL and w.dv != NULL else -1


cdef void worker_free(Worker *w) noexcept nogil:
    cdef int i
    for i in range(CTX_SLOTS):
        if w.ctxs[i].ctx != NULL:
            EVP_PKEY_CTX_free(w.ctxs[i].ctx)
    if w.md != NULL:
        EVP_MD_CTX_free(w.md)
    if w.dv != NULL:
        EVP_MD_CTX_free(w.dv)
    free(w.scratch)
    free(w.embedded)


# --------------------------------------------------------------------------- Python API

#: The fingerprint of the verification profile and result codes this extension was
#: built from (fastpath/profile_codegen.py).
PROFILE_FINGERPRINT = PF_PROFILE_FINGERPRINT.decode()

_built_from_current_profile = None


def _check_profile():
    """Refuse to run with a profile or result codes other than those compiled in."""
    global _built_from_current_profile
    if _built_from_current_profile is None:
        from pledgeforge.fastpath.profile_codegen import fingerprint
        from pledgeforge.fastpath.results import Result
        from pledgeforge.hsm import verification_profile
        _built_from_current_profile = \
            fingerprint(vars(verification_profile), Result) == PROFILE_FINGERPRINT
    if not _built_from_current_profile:
        raise RuntimeError("the fastpath extension was built from another verification profile "
                           "or other result codes: rebuild it (make ext)")


def openssl_version_num():
    """The libcrypto version this extension is linked against."""
    return OpenSSL_version_num()


cdef class ItemResult:
    """The verdict on one item.

    `code` is a pledgeforge.fastpath.Result. `serial` is the subject
    serialNumber (2.5.4.5) of the signer certificate (of the certificate itself
    in certificate mode), None when there is none or the signer was not found.
    `content_offset`/`content_length` locate the signed content inside the item
    (for a certificate: the whole item), so a caller reads the voucher without
    copying; `item_offset` is where the item starts in a concatenated-DER file,
    `name` the file an item came from in a directory.

    Made by the extension, one per item, without a Python-level constructor
    call: at bulk rates that call would cost more than the parsing.
    """

    cdef readonly Py_ssize_t index
    cdef readonly object code
    cdef readonly object serial
    cdef readonly Py_ssize_t content_offset
    cdef readonly Py_ssize_t content_length
    cdef readonly object name
    cdef readonly object item_offset

    def __init__(self, Py_ssize_t index, code, serial, Py_ssize_t content_offset,
                 Py_ssize_t content_length, name=None, item_offset=None):
        self.index = index
        self.code = code
        self.serial = serial
        self.content_offset = content_offset
        self.content_length = content_length
        self.name = name
        self.item_offset = item_offset

    @property
    def ok(self):
        return self.code == R_OK

    def _fields(self):
        return (self.index, self.code, self.serial, self.content_offset, self.content_length,
                self.name, self.item_offset)

    def __eq__(self, other):
        if type(other) is not ItemResult:
            return NotImplemented
        return self._fields() == (<ItemResult>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return ("ItemResult(index=%r, code=%r, serial=%r, content_offset=%r, content_length=%r, "
                "name=%r, item_offset=%r)" % self._fields())

    def __reduce__(self):
        return ItemResult, self._fields()


cdef object decode_serial(const ItemOut *o):
    """The text of a serialNumber attribute, decoded as the profile's NAME_STRING_TYPES
    say for its DER string type (UTF-8 for any other type)."""
    cdef const char *p = <const char *>o.serial
    cdef int text = PF_NAME_TEXT[o.serial_tag]
    if text == TEXT_UTF16BE:
        return p[:o.serial_len].decode("utf-16-be", "replace")
    if text == TEXT_UTF32BE:
        return p[:o.serial_len].decode("utf-32-be", "replace")
    return p[:o.serial_len].decode("utf-8", "replace")


cdef class Engine:
    """Trust anchors, extra certificates and time policy; verifies batches of items.

    One Engine keeps its certificate cache between batches: certificates the
    previous batch did not use are dropped at the start of the next, so a
    registrar's certificate is verified once for a whole stream while memory
    stays bounded by the batch size. One batch at a time: a second Python thread
    calling verify while a batch runs gets a RuntimeError (each batch already
    uses `threads` OS threads).
    """

    cdef EngineC *e
    cdef int threads
    cdef Worker *workers
    cdef tuple codes
    cdef bint busy          # a batch is running (the GIL is released meanwhile)

    def __cinit__(self, anchors, extra_certs, int threads, bint check_time, long long at_us):
        cdef size_t i
        cdef Cert *c
        from pledgeforge.fastpath.results import Result
        if threads < 1:
            raise ValueError("threads must be at least 1")
        _check_profile()
        self.codes = tuple(Result)
        self.e = <EngineC *>calloc(1, sizeof(EngineC))
        if self.e == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.e.lock, NULL)
        pthread_cond_init(&self.e.ready, NULL)
        for i in range(1, H_COUNT):
            self.e.mds[i] = EVP_MD_fetch(NULL, PF_HASH_LIBCRYPTO_NAMES[i], NULL)
            if self.e.mds[i] == NULL:
                raise RuntimeError(f"libcrypto lacks the {PF_HASH_LIBCRYPTO_NAMES[i].decode()} digest")
        self.e.check_time = check_time
        self.e.at_us = at_us
        self.threads = threads
        self.workers = <Worker *>calloc(threads, sizeof(Worker))
        if self.workers == NULL:
            raise MemoryError()
        for i in range(threads):
            if worker_init(&self.workers[i], self.e) < 0:
                raise MemoryError()
        self.e.anchors = <Cert **>calloc(len(anchors) + 1, sizeof(Cert *))
        self.e.extras = <Cert **>calloc(len(extra_certs) + 1, sizeof(Cert *))
        if self.e.anchors == NULL or self.e.extras == NULL:
            raise MemoryError()
        for i, der in enumerate(anchors):
            c = self._pin(der, "trust anchor")
            if c.anchor_index < 0:
                c.anchor_index = <int>i
            self.e.anchors[self.e.n_anchors] = c
            self.e.n_anchors += 1
        for der in extra_certs:
            self.e.extras[self.e.n_extras] = self._pin(der, "extra certificate")
            self.e.n_extras += 1

    cdef Cert *_pin(self, bytes der, str what) except NULL:
        cdef Cert *c = cert_get(self.e, <const uint8_t *>PyBytes_AS_STRING(der),
                                <size_t>PyBytes_GET_SIZE(der))
        if c == NULL:
            raise MemoryError()
        if not c.ok:
            raise ValueError(f"{what} is not a well-formed X.509 certificate")
        c.pinned = True
        return c

    def __dealloc__(self):
        cdef size_t i
        if self.workers != NULL:
            for i in range(self.threads):
                worker_free(&self.workers[i])
            free(self.workers)
        if self.e != NULL:
            for i in range(self.e.cap):
                if self.e.table[i] != NULL:
                    cert_free(self.e.table[i])
            free(self.e.table)
            free(self.e.anchors)
            free(self.e.extras)
            for i in range(1, H_COUNT):
                if self.e.mds[i] != NULL:
                    EVP_MD_free(self.e.mds[i])
            pthread_mutex_destroy(&self.e.lock)
            pthread_cond_destroy(&self.e.ready)
            free(self.e)

    @property
    def stats(self):
        """Certificates parsed and certificate signatures checked so far."""
        return {"cert_parses": self.e.cert_parses, "cert_verifies": self.e.cert_verifies,
                "cached_certs": self.e.count}

    def verify(self, list items, bint certificates=False, Py_ssize_t first_index=0,
               list names=None, list offsets=None):
        """Verify a batch of DER items (bytes); one ItemResult per item, in order.

        `names` and `offsets`, when given, hold each item's origin (file name,
        position in a concatenated-DER file)."""
        cdef size_t n = len(items), i
        cdef const uint8_t **ptrs = <const uint8_t **>malloc((n + 1) * sizeof(uint8_t *))
        cdef size_t *lens = <size_t *>malloc((n + 1) * sizeof(size_t))
        cdef ItemOut *out = <ItemOut *>calloc(n + 1, sizeof(ItemOut))
        cdef pthread_t *tids = NULL
        cdef int t, started = 0
        cdef ItemOut *o
        cdef ItemResult r
        cdef dict serials
        cdef list results
        if self.busy:
            free(ptrs)
            free(lens)
            free(out)
            raise RuntimeError("this verifier is already verifying a batch in another thread")
        if ptrs == NULL or lens == NULL or out == NULL:
            free(ptrs)
            free(lens)
            free(out)
            raise MemoryError()
        self.busy = True
        try:
            if names is not None and <size_t>len(names) != n or \
                    offsets is not None and <size_t>len(offsets) != n:
                raise ValueError("names and offsets must have one entry per item")
            for i in range(n):
                item = items[i]
                if type(item) is not bytes:
                    raise TypeError("items must be bytes")
                ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(item)
                lens[i] = <size_t>PyBytes_GET_SIZE(item)
            tids = <pthread_t *>calloc(self.threads, sizeof(pthread_t))
            if tids == NULL:
                raise MemoryError()
            with nogil:
                table_evict(self.e)
                self.e.batch += 1
                self.e.items = ptrs
                self.e.lens = lens
                self.e.out = out
                self.e.n_items = n
                self.e.next_item = 0
                self.e.mode = 1 if certificates else 0
                # The calling thread is worker 0; small batches need no extra threads.
                for t in range(1, self.threads):
                    if <size_t>t * CLAIM >= n:
                        break
                    if pthread_create(&tids[t], NULL, worker_main, &self.workers[t]) != 0:
                        break
                    started = t
                worker_main(&self.workers[0])
                for t in range(1, started + 1):
                    pthread_join(tids[t], NULL)
                self.e.items = NULL
                self.e.lens = NULL
                self.e.out = NULL
            # A serial points into its certificate's cached DER, which outlives the
            # batch: decode each distinct one once, keyed by that address.
            serials = {}
            results = [None] * n
            for i in range(n):
                o = &out[i]
                r = ItemResult.__new__(ItemResult)
                r.index = first_index + <Py_ssize_t>i
                r.code = self.codes[o.code]
                if o.serial != NULL:
                    key = <size_t>o.serial
                    serial = serials.get(key)
                    if serial is None:
                        serial = serials[key] = decode_serial(o)
                    r.serial = serial
                r.content_offset = <Py_ssize_t>o.content_off
                r.content_length = <Py_ssize_t>o.content_len
                if names is not None:
                    r.name = names[i]
                if offsets is not None:
                    r.item_offset = offsets[i]
                results[i] = r
            return results
        finally:
            self.busy = False
            free(tids)
            free(ptrs)
            free(lens)
            free(out)
