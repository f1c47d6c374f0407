# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""X.509 certificates as the reference reads them (cryptography's parser and its
verify_directly_issued_by): which encodings load, which names can be read, which
extensions are decoded, which signature algorithms and keys are checked.

Algorithms, key types, curves and name string types come from the verification
profile (hsm/verification_profile.py, compiled into _profile.pxd); the encoding
rules for algorithm parameters below are those of cryptography's parser.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp, strcmp

from ._der cimport (Cursor, Tlv, biguint_valid, bitstring_valid, bool_true,
                    cur_expect, cur_init, cur_next, cur_take, der_order, der_read, int_valid,
                    null_valid, oid_find, oid_has_prefix, oid_is, oid_valid, text_valid,
                    uint_small, utf8_valid, x509_time)
from ._libcrypto cimport (ERR_clear_error, EVP_PKEY_DSA, EVP_PKEY_EC, EVP_PKEY_ED448,
                          EVP_PKEY_ED25519, EVP_PKEY_RSA, EVP_PKEY_RSA_PSS, EVP_PKEY_free,
                          EVP_PKEY_get_base_id, EVP_PKEY_get_group_name, d2i_PUBKEY)
from ._profile cimport (H_FROM_PSS_PARAMS, H_NONE, H_SHA1, N_CERTIFICATE_SIGNATURE_ALGORITHMS,
                        N_EXPLICIT_CURVES, N_HASHES, N_NAMED_CURVES, N_PUBLIC_KEY_TYPES,
                        PF_CERTIFICATE_SIGNATURE_ALGORITHMS, PF_EXPLICIT_CURVES, PF_HASHES,
                        PF_NAME_LOAD_CHECK, PF_NAME_TEXT, PF_NAMED_CURVES,
                        PF_OID_AT_SERIAL_NUMBER, PF_OID_AT_UNIQUE_IDENTIFIER,
                        PF_PUBLIC_KEY_TYPES, OidEntry, S_DSA, S_ECDSA, S_ED448, S_ED25519,
                        S_RSA_PKCS1, S_RSA_PSS, S_UNSUPPORTED, TEXT_NONE)

# Parameter rules for AlgorithmIdentifier, as the reference's X.509 parser applies them.
cdef enum:
    P_ANY = 0       # unknown algorithm: any single element or nothing
    P_OPT_NULL = 1  # absent or NULL
    P_NONE = 2      # must be absent
    P_EC = 3        # named curve OID, NULL or SpecifiedECDomain
    P_PSS = 4       # absent or RSASSA-PSS-params
    P_DSA = 5       # Dss-Parms
    P_OCTET16 = 6   # AES-CBC: a 16-octet IV
    P_DHX = 7       # DomainParameters (RFC 3279)
    P_DH_BASIC = 8  # PKCS #3 DHParameter
    P_PBKDF2 = 9    # PBKDF2-params
    P_PBES2 = 10    # PBES2-params
    P_PBES1 = 11    # PBEParameter


cdef enum:
    # AlgorithmIdentifiers inside parameters (PSS hashes, PBES2) the fastpath follows;
    # deeper is refused, so hostile nesting cannot exhaust a worker's stack.
    ALG_NESTING = 8


cdef extern from *:
    """
    /* DER contents of the object identifiers (and arcs) the parameter rules name. */
    #include <stdint.h>
    #define PF_U64_MAX UINT64_MAX
    static const unsigned char PF_OID_SHA1[] = {0x2b,0x0e,0x03,0x02,0x1a};
    static const unsigned char PF_OID_NIST_HASH[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x02};   /* + n */
    static const unsigned char PF_OID_NIST_SIG[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x03};    /* + n */
    static const unsigned char PF_OID_ECDSA[] = {0x2a,0x86,0x48,0xce,0x3d,0x04};                 /* 1.2.840.10045.4 */
    static const unsigned char PF_OID_EC_PUBKEY[] = {0x2a,0x86,0x48,0xce,0x3d,0x02,0x01};
    static const unsigned char PF_OID_PKCS1[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x01};       /* + n */
    static const unsigned char PF_OID_SHA1_RSA_ALT[] = {0x2b,0x0e,0x03,0x02,0x1d};
    static const unsigned char PF_OID_DSA[] = {0x2a,0x86,0x48,0xce,0x38,0x04,0x01};
    static const unsigned char PF_OID_EDWARDS[] = {0x2b,0x65};                                    /* + 0x6e..0x71 */
    static const unsigned char PF_OID_CE[] = {0x55,0x1d};                                          /* + n */
    static const unsigned char PF_OID_RSADSI_DIGEST[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x02};        /* + n: HMAC */
    static const unsigned char PF_OID_PKCS5[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x05};        /* + n */
    static const unsigned char PF_OID_PKCS12_PBE[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x0c,0x01}; /* + n */
    static const unsigned char PF_OID_DH_AGREEMENT[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x03,0x01};
    static const unsigned char PF_OID_DHX[] = {0x2a,0x86,0x48,0xce,0x3e,0x02,0x01};
    static const unsigned char PF_OID_NIST_AES[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x01};    /* + n */
    static const unsigned char PF_OID_NIST_KEM[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x04};    /* + n */
    static const unsigned char PF_OID_PRIME_FIELD[] = {0x2a,0x86,0x48,0xce,0x3d,0x01,0x01};
    static const unsigned char PF_OID_CHAR2_FIELD[] = {0x2a,0x86,0x48,0xce,0x3d,0x01,0x02};
    /* DER of the default PBKDF2 prf (hmacWithSHA1), which DER forbids spelling out. */
    static const unsigned char PF_PBKDF2_PRF_DEFAULT[] = {0x30,0x0c,0x06,0x08,0x2a,0x86,0x48,0x86,0xf7,0x0d,0x02,0x07,0x05,0x00};
    /* DER of the defaults RSASSA-PSS-params must not spell out. */
    static const unsigned char PF_PSS_SHA1_DEFAULT[] = {0x30,0x09,0x06,0x05,0x2b,0x0e,0x03,0x02,0x1a,0x05,0x00};
    static const unsigned char PF_PSS_MGF1_DEFAULT[] = {0x30,0x16,0x06,0x09,0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x01,0x08,
                                                       0x30,0x09,0x06,0x05,0x2b,0x0e,0x03,0x02,0x1a,0x05,0x00};
    """
    uint64_t PF_U64_MAX
    const uint8_t PF_OID_SHA1[5]
    const uint8_t PF_OID_NIST_HASH[8]
    const uint8_t PF_OID_NIST_SIG[8]
    const uint8_t PF_OID_ECDSA[6]
    const uint8_t PF_OID_EC_PUBKEY[7]
    const uint8_t PF_OID_PKCS1[8]
    const uint8_t PF_OID_SHA1_RSA_ALT[5]
    const uint8_t PF_OID_DSA[7]
    const uint8_t PF_OID_EDWARDS[2]
    const uint8_t PF_OID_CE[2]
    const uint8_t PF_OID_RSADSI_DIGEST[7]
    const uint8_t PF_OID_PKCS5[8]
    const uint8_t PF_OID_PKCS12_PBE[9]
    const uint8_t PF_OID_DH_AGREEMENT[9]
    const uint8_t PF_OID_DHX[7]
    const uint8_t PF_OID_NIST_AES[8]
    const uint8_t PF_OID_NIST_KEM[8]
    const uint8_t PF_OID_PRIME_FIELD[7]
    const uint8_t PF_OID_CHAR2_FIELD[7]
    const uint8_t PF_PBKDF2_PRF_DEFAULT[14]
    const uint8_t PF_PSS_SHA1_DEFAULT[11]
    const uint8_t PF_PSS_MGF1_DEFAULT[24]


# --------------------------------------------------------------------------- names

cdef bint name_value_decodable(const Tlv *oid, const Tlv *v) noexcept nogil:
    """Whether the reference can turn a name attribute into text (or bytes): a string
    of the profile's NAME_STRING_TYPES, or a BIT STRING for x500UniqueIdentifier."""
    if v.tag == 0x03:
        return oid_is(oid, PF_OID_AT_UNIQUE_IDENTIFIER, sizeof(PF_OID_AT_UNIQUE_IDENTIFIER))
    return text_valid(PF_NAME_TEXT[v.tag], v.val, v.vlen)


cdef bint name_value_loads(const Tlv *v) noexcept nogil:
    """String types the reference's X.509 parser validates while loading a certificate."""
    cdef int check = PF_NAME_LOAD_CHECK[v.tag]
    return check == TEXT_NONE or text_valid(check, v.val, v.vlen)


cdef int name_check(const Tlv *name, bint *decodable, const uint8_t **serial,
                    size_t *serial_len, int *serial_tag) noexcept nogil:
    """Validate a Name's structure (-1 if broken); report decodability and serialNumber.

    As the reference's X.509 parser: a certificate whose RDN lists its attributes out
    of DER order does not load; an empty RDN or the same attribute twice in one RDN
    loads, but the name cannot be read (decodable False)."""
    cdef Cursor rdns, rdn, atv
    cdef Tlv r, a, prev, oid, val
    cdef int k, count
    if name.tag != 0x30:
        return -1
    decodable[0] = True
    cur_init(&rdns, name)
    while True:
        k = cur_next(&rdns, &r)
        if k == 0:
            break
        if k < 0 or r.tag != 0x31:
            return -1
        cur_init(&rdn, &r)
        count = 0
        while True:
            k = cur_next(&rdn, &a)
            if k == 0:
                break
            if k < 0 or a.tag != 0x30:
                return -1
            if count > 0:
                k = der_order(&prev, &a)
                if k > 0:
                    return -1
                if k == 0:
                    decodable[0] = False
            prev = a
            count += 1
            cur_init(&atv, &a)
            if cur_expect(&atv, &oid, 0x06) < 0 or not oid_valid(&oid):
                return -1
            if cur_next(&atv, &val) != 1 or atv.n != 0:
                return -1
            if not name_value_loads(&val):
                return -1
            if not name_value_decodable(&oid, &val):
                decodable[0] = False
            if serial != NULL and serial[0] == NULL and \
                    oid_is(&oid, PF_OID_AT_SERIAL_NUMBER, sizeof(PF_OID_AT_SERIAL_NUMBER)):
                serial[0] = val.val
                serial_len[0] = val.vlen
                serial_tag[0] = val.tag
        if count == 0:
            decodable[0] = False
    return 0


# --------------------------------------------------------------------------- algorithms

cdef int hash_by_oid(const Tlv *oid) noexcept nogil:
    """A hash of the profile's HASHES by OID (H_*), H_NONE otherwise."""
    cdef int i = oid_find(oid, PF_HASHES, N_HASHES)
    return PF_HASHES[i].hash if i >= 0 else H_NONE


cdef int params_rule(const Tlv *oid) noexcept nogil:
    """How the reference's X.509 parser reads the parameters of this algorithm."""
    cdef uint8_t last
    if oid_is(oid, PF_OID_SHA1, 5) or oid_is(oid, PF_OID_SHA1_RSA_ALT, 5):
        return P_OPT_NULL
    if oid_has_prefix(oid, PF_OID_NIST_HASH, 8):
        last = oid.val[8]
        return P_OPT_NULL if 1 <= last <= 4 or 7 <= last <= 10 else P_ANY
    if oid_has_prefix(oid, PF_OID_NIST_SIG, 8):
        last = oid.val[8]
        if 9 <= last <= 12 or 1 <= last <= 4 or 17 <= last <= 19:
            return P_NONE            # ecdsa-with-SHA3-*, DSA with SHA-2, ML-DSA
        if 13 <= last <= 16:
            return P_OPT_NULL        # RSA with SHA3-*
        return P_ANY
    if oid_is(oid, PF_OID_EC_PUBKEY, 7):
        return P_EC
    if oid.vlen == 8 and memcmp(oid.val, PF_OID_ECDSA, 6) == 0 and oid.val[6] == 0x03:
        return P_NONE if 1 <= oid.val[7] <= 4 else P_ANY    # ecdsa-with-SHA2: no NULL
    if oid_has_prefix(oid, PF_OID_PKCS1, 8):
        last = oid.val[8]
        if last == 1 or last == 5 or (11 <= last <= 14):
            return P_OPT_NULL
        if last == 10:
            return P_PSS
        return P_ANY
    if oid_has_prefix(oid, PF_OID_EDWARDS, 2) and 0x6e <= oid.val[2] <= 0x71:
        return P_NONE
    if oid_is(oid, PF_OID_DSA, 7):
        return P_DSA
    if oid_has_prefix(oid, PF_OID_RSADSI_DIGEST, 7) and 7 <= oid.val[7] <= 11:
        return P_OPT_NULL            # hmacWithSHA1..SHA512
    if oid_has_prefix(oid, PF_OID_NIST_AES, 8) and oid.val[8] in (2, 22, 42):
        return P_OCTET16             # AES-128/192/256-CBC
    if oid_has_prefix(oid, PF_OID_NIST_KEM, 8) and 2 <= oid.val[8] <= 3:
        return P_NONE                # ML-KEM-768/1024
    if oid_is(oid, PF_OID_DHX, 7):
        return P_DHX
    if oid_is(oid, PF_OID_DH_AGREEMENT, 9):
        return P_DH_BASIC
    if oid_has_prefix(oid, PF_OID_PKCS5, 8):
        last = oid.val[8]
        if last == 12:
            return P_PBKDF2
        if last == 13:
            return P_PBES2
        if last == 3:
            return P_PBES1           # pbeWithMD5AndDES-CBC
        return P_ANY
    if oid_has_prefix(oid, PF_OID_PKCS12_PBE, 9) and oid.val[9] in (1, 3, 6):
        return P_PBES1
    return P_ANY


cdef int algid_read(const Tlv *t, AlgId *a, bint strict) noexcept nogil:
    """AlgorithmIdentifier; with strict, its parameters as the X.509 parser checks them."""
    return algid_read_nested(t, a, ALG_NESTING if strict else 0)


cdef int algid_read_nested(const Tlv *t, AlgId *a, int depth) noexcept nogil:
    """algid_read; depth > 0 checks parameters, with depth - 1 levels of AlgorithmIdentifiers
    inside them (hostile nesting cannot exhaust a worker's stack)."""
    cdef Cursor c
    if t.tag != 0x30:
        return -1
    cur_init(&c, t)
    if cur_expect(&c, &a.oid, 0x06) < 0:
        return -1
    a.has_params = c.n > 0
    if a.has_params:
        if cur_next(&c, &a.params) != 1:
            return -1
    if c.n != 0:
        return -1
    if depth == 0:
        return 0
    if not oid_valid(&a.oid):
        return -1
    return params_check(a, depth)


cdef bint specified_domain_valid(const Tlv *t) noexcept nogil:
    """SpecifiedECDomain (explicit curve parameters, RFC 3279) as the reference reads it:
    version (8 bits), fieldID (prime-p INTEGER or characteristic-two SEQUENCE), curve
    {a, b, optional seed}, base, order, optional cofactor."""
    cdef Cursor c, w
    cdef Tlv x, oid
    cdef uint64_t v
    if t.tag != 0x30:
        return False
    cur_init(&c, t)
    if cur_next(&c, &x) != 1 or not uint_small(&x, 255, &v):
        return False
    if cur_expect(&c, &x, 0x30) < 0:
        return False
    cur_init(&w, &x)
    if cur_expect(&w, &oid, 0x06) < 0 or cur_next(&w, &x) != 1 or w.n != 0:
        return False
    if oid_is(&oid, PF_OID_PRIME_FIELD, 7):
        if not biguint_valid(&x):
            return False
    elif not (oid_is(&oid, PF_OID_CHAR2_FIELD, 7) and x.tag == 0x30):
        return False
    if cur_expect(&c, &x, 0x30) < 0:
        return False
    cur_init(&w, &x)
    if cur_expect(&w, &x, 0x04) < 0 or cur_expect(&w, &x, 0x04) < 0:
        return False
    if cur_take(&w, &x, 0x03) and not bitstring_valid(&x):
        return False
    if w.n != 0:
        return False
    if cur_expect(&c, &x, 0x04) < 0:
        return False
    if cur_next(&c, &x) != 1 or not biguint_valid(&x):
        return False
    if cur_take(&c, &x, 0x02) and not biguint_valid(&x):
        return False
    return c.n == 0


cdef int params_check(const AlgId *a, int depth) noexcept nogil:
    """The parameters of a valid AlgorithmIdentifier, per params_rule: 0 or -1."""
    cdef Cursor c
    cdef Tlv x
    cdef AlgId inner
    cdef int rule, h1, h2, k
    cdef uint64_t s
    cdef bint mgf1
    rule = params_rule(&a.oid)
    if rule == P_ANY:
        return 0
    if rule == P_OPT_NULL:
        return 0 if not a.has_params or null_valid(&a.params) else -1
    if rule == P_NONE:
        return -1 if a.has_params else 0
    if not a.has_params:
        return 0 if rule == P_PSS else -1
    if rule == P_EC:
        if a.params.tag == 0x06:
            return 0 if oid_valid(&a.params) else -1
        return 0 if null_valid(&a.params) or specified_domain_valid(&a.params) else -1
    if rule == P_PSS:
        return pss_params_check(&a.params, &h1, &h2, &mgf1, &s, depth)
    if rule == P_OCTET16:
        return 0 if a.params.tag == 0x04 and a.params.vlen == 16 else -1
    if a.params.tag != 0x30:
        return -1
    cur_init(&c, &a.params)
    if rule == P_DSA:
        for k in range(3):
            if cur_next(&c, &x) != 1 or not biguint_valid(&x):
                return -1
    elif rule == P_DHX:
        # p, g, q, optional j, optional validationParms
        for k in range(3):
            if cur_next(&c, &x) != 1 or not biguint_valid(&x):
                return -1
        if cur_take(&c, &x, 0x02) and not biguint_valid(&x):
            return -1
        cur_take(&c, &x, 0x30)
    elif rule == P_DH_BASIC:
        # p, g, optional privateValueLength (32 bits)
        for k in range(2):
            if cur_next(&c, &x) != 1 or not biguint_valid(&x):
                return -1
        if cur_take(&c, &x, 0x02) and not uint_small(&x, 0xffffffff, &s):
            return -1
    elif rule == P_PBKDF2:
        # salt, iterationCount, optional keyLength, prf DEFAULT hmacWithSHA1
        if cur_expect(&c, &x, 0x04) < 0:
            return -1
        if cur_next(&c, &x) != 1 or not uint_small(&x, PF_U64_MAX, &s):
            return -1
        if cur_take(&c, &x, 0x02) and not uint_small(&x, PF_U64_MAX, &s):
            return -1
        if cur_take(&c, &x, 0x30):
            if x.tlen == 14 and memcmp(x.hdr, PF_PBKDF2_PRF_DEFAULT, 14) == 0:
                return -1
            if depth <= 1 or algid_read_nested(&x, &inner, depth - 1) < 0:
                return -1
    elif rule == P_PBES2:
        # keyDerivationFunc, encryptionScheme
        for k in range(2):
            if cur_next(&c, &x) != 1 or depth <= 1 or algid_read_nested(&x, &inner, depth - 1) < 0:
                return -1
    elif rule == P_PBES1:
        # salt, iterationCount
        if cur_expect(&c, &x, 0x04) < 0:
            return -1
        if cur_next(&c, &x) != 1 or not uint_small(&x, PF_U64_MAX, &s):
            return -1
    return 0 if c.n == 0 else -1


cdef int pss_params_check(const Tlv *p, int *hash_id, int *mgf_hash, bint *mgf1,
                          uint64_t *salt, int depth) noexcept nogil:
    """RSASSA-PSS-params: hash, mask generation hash and salt length (defaults SHA-1,
    MGF1 with SHA-1, 20); H_NONE for a hash outside SHA-1/2/3, mgf1 False when the mask
    generation function is not MGF1."""
    cdef Cursor c, w, m
    cdef Tlv x, inner, moid, mparams
    cdef AlgId a
    cdef uint64_t v
    hash_id[0] = H_SHA1
    mgf_hash[0] = H_SHA1
    mgf1[0] = True
    salt[0] = 20
    if p.tag != 0x30:
        return -1
    cur_init(&c, p)
    if cur_take(&c, &x, 0xa0):
        cur_init(&w, &x)
        if cur_next(&w, &inner) != 1 or w.n != 0 or depth <= 1 or \
                algid_read_nested(&inner, &a, depth - 1) < 0:
            return -1
        if inner.tlen == 11 and memcmp(inner.hdr, PF_PSS_SHA1_DEFAULT, 11) == 0:
            return -1
        hash_id[0] = hash_by_oid(&a.oid)
    if cur_take(&c, &x, 0xa1):
        cur_init(&w, &x)
        if cur_next(&w, &inner) != 1 or w.n != 0 or inner.tag != 0x30:
            return -1
        if inner.tlen == 24 and memcmp(inner.hdr, PF_PSS_MGF1_DEFAULT, 24) == 0:
            return -1
        cur_init(&m, &inner)
        if cur_expect(&m, &moid, 0x06) < 0 or not oid_valid(&moid):
            return -1
        if cur_next(&m, &mparams) != 1 or m.n != 0 or depth <= 1 or \
                algid_read_nested(&mparams, &a, depth - 1) < 0:
            return -1
        mgf_hash[0] = hash_by_oid(&a.oid)
        mgf1[0] = oid_has_prefix(&moid, PF_OID_PKCS1, 8) and moid.val[8] == 8
    if cur_take(&c, &x, 0xa2):
        cur_init(&w, &x)
        if cur_next(&w, &inner) != 1 or w.n != 0 or not uint_small(&inner, 65535, &v) or v == 20:
            return -1
        salt[0] = v
    if cur_take(&c, &x, 0xa3):
        cur_init(&w, &x)
        if cur_next(&w, &inner) != 1 or w.n != 0 or not uint_small(&inner, 255, &v):
            return -1
    return 0 if c.n == 0 else -1


cdef void cert_signature_scheme(const AlgId *a, int *scheme, int *hash_id, int *mgf,
                                uint64_t *salt, bint *uncheckable) noexcept nogil:
    """How the reference (cryptography's verify_directly_issued_by) treats a certificate
    signature algorithm: the profile's CERTIFICATE_SIGNATURE_ALGORITHMS. S_UNSUPPORTED:
    it declines (an algorithm not listed, PSS without parameters or without MGF1), so
    the issuer did not sign this certificate as far as it is concerned. `uncheckable`:
    it knows the key type but raises on the hash (listed as not checkable, PSS with a
    hash outside HASHES), which makes the item MALFORMED once an issuer's key fits."""
    cdef int i = oid_find(&a.oid, PF_CERTIFICATE_SIGNATURE_ALGORITHMS,
                          N_CERTIFICATE_SIGNATURE_ALGORITHMS)
    cdef const OidEntry *alg
    cdef bint mgf1
    scheme[0] = S_UNSUPPORTED
    hash_id[0] = H_NONE
    salt[0] = 0
    mgf[0] = H_NONE
    uncheckable[0] = False
    if i < 0:
        return
    alg = &PF_CERTIFICATE_SIGNATURE_ALGORITHMS[i]
    if alg.hash == H_FROM_PSS_PARAMS:
        if a.has_params and pss_params_check(&a.params, hash_id, mgf, &mgf1, salt, ALG_NESTING) == 0 \
                and mgf1:
            scheme[0] = alg.kind
            uncheckable[0] = hash_id[0] == H_NONE or mgf[0] == H_NONE
        return
    scheme[0] = alg.kind
    hash_id[0] = alg.hash
    uncheckable[0] = not alg.flag


cdef bint key_fits(int scheme, int key_kind) noexcept nogil:
    """Whether a key of this kind makes signatures of this scheme."""
    if scheme == S_ECDSA:
        return key_kind == K_EC
    if scheme == S_RSA_PKCS1 or scheme == S_RSA_PSS:
        return key_kind == K_RSA
    if scheme == S_ED25519:
        return key_kind == K_ED25519
    if scheme == S_ED448:
        return key_kind == K_ED448
    if scheme == S_DSA:
        return key_kind == K_DSA
    return False


# --------------------------------------------------------------------------- certificates

cdef int spki_key_kind(const Tlv *spki, bint *explicit_curve) noexcept nogil:
    """K_UNSUPPORTED where the reference refuses the key before looking at it (a type
    outside PUBLIC_KEY_TYPES, a curve outside NAMED_CURVES, an implicit curve), K_BAD
    where it cannot read it, otherwise K_OTHER: libcrypto decides."""
    cdef Cursor c
    cdef Tlv alg, bits
    cdef AlgId a
    explicit_curve[0] = False
    cur_init(&c, spki)
    if cur_next(&c, &alg) != 1 or algid_read(&alg, &a, False) < 0:
        return K_BAD
    if oid_find(&a.oid, PF_PUBLIC_KEY_TYPES, N_PUBLIC_KEY_TYPES) < 0:
        return K_UNSUPPORTED
    if oid_is(&a.oid, PF_OID_EC_PUBKEY, sizeof(PF_OID_EC_PUBKEY)):
        if not a.has_params or a.params.tag == 0x05:
            return K_UNSUPPORTED
        if a.params.tag == 0x06 and oid_find(&a.params, PF_NAMED_CURVES, N_NAMED_CURVES) < 0:
            return K_UNSUPPORTED
        explicit_curve[0] = a.params.tag == 0x30
    if cur_next(&c, &bits) != 1 or bits.vlen == 0 or bits.val[0] != 0:
        return K_BAD        # a key is whole octets
    if oid_has_prefix(&a.oid, PF_OID_PKCS1, sizeof(PF_OID_PKCS1)) and \
            not rsa_public_key_valid(bits.val + 1, bits.vlen - 1):
        return K_BAD        # libcrypto would read it; cryptography does not
    return K_OTHER


cdef bint rsa_public_key_valid(const uint8_t *p, size_t n) noexcept nogil:
    """RSAPublicKey as cryptography reads it: SEQUENCE { modulus, publicExponent },
    both minimal non-negative INTEGERs, and nothing else."""
    cdef Tlv seq, x
    cdef Cursor c
    cdef int k
    if der_read(p, n, &seq) < 0 or seq.tag != 0x30 or seq.tlen != n:
        return False
    cur_init(&c, &seq)
    for k in range(2):
        if cur_next(&c, &x) != 1 or not biguint_valid(&x):
            return False
    return c.n == 0


cdef int cert_parse(Cert *c) noexcept nogil:
    """Fill c from c.der; 0 if the certificate reads as the reference requires, else -1."""
    cdef Tlv outer, tbs, t, v, sig
    cdef Cursor co, ct, cw
    cdef AlgId alg
    cdef uint64_t ver
    cdef int k
    c.ok = False
    c.sn_attr = NULL
    c.sn_len = 0
    c.sn_tag = 0
    if der_read(c.der, c.der_len, &outer) < 0 or outer.tag != 0x30 or outer.tlen != c.der_len:
        return -1
    cur_init(&co, &outer)
    if cur_expect(&co, &tbs, 0x30) < 0:
        return -1
    c.tbs = tbs
    if cur_expect(&co, &c.sigalg, 0x30) < 0 or algid_read(&c.sigalg, &alg, True) < 0:
        return -1
    if cur_expect(&co, &sig, 0x03) < 0 or not bitstring_valid(&sig) or co.n != 0:
        return -1
    c.sig = sig.val + 1
    c.sig_len = sig.vlen - 1
    cert_signature_scheme(&alg, &c.scheme, &c.sig_hash, &c.pss_mgf, &c.pss_salt,
                          &c.sig_uncheckable)

    cur_init(&ct, &tbs)
    c.version = 0
    if cur_take(&ct, &t, 0xa0):
        cur_init(&cw, &t)
        # DEFAULT v1 may not be spelled out; only v2 and v3 exist besides.
        if cur_next(&cw, &v) != 1 or cw.n != 0 or not uint_small(&v, 255, &ver):
            return -1
        if ver == 0 or ver > 2:
            return -1
        c.version = <int>ver
    if cur_expect(&ct, &c.serial, 0x02) < 0 or not int_valid(&c.serial):
        return -1
    if cur_expect(&ct, &c.tbs_sigalg, 0x30) < 0 or algid_read(&c.tbs_sigalg, &alg, True) < 0:
        return -1
    if cur_expect(&ct, &c.issuer, 0x30) < 0 or \
            name_check(&c.issuer, &c.issuer_decodable, NULL, NULL, NULL) < 0:
        return -1
    if cur_expect(&ct, &t, 0x30) < 0:
        return -1
    cur_init(&cw, &t)
    if cur_next(&cw, &v) != 1 or x509_time(&v, &c.not_before) < 0:
        return -1
    if cur_next(&cw, &v) != 1 or x509_time(&v, &c.not_after) < 0 or cw.n != 0:
        return -1
    if cur_expect(&ct, &c.subject, 0x30) < 0 or \
            name_check(&c.subject, &c.subject_decodable, &c.sn_attr, &c.sn_len, &c.sn_tag) < 0:
        return -1
    if cur_expect(&ct, &c.spki, 0x30) < 0:
        return -1
    cur_init(&cw, &c.spki)
    if cur_next(&cw, &t) != 1 or algid_read(&t, &alg, True) < 0:
        return -1
    if cur_expect(&cw, &v, 0x03) < 0 or not bitstring_valid(&v) or cw.n != 0:
        return -1
    if cur_take(&ct, &t, 0x81):
        if t.vlen == 0 or t.val[0] > 7:
            return -1
    if cur_take(&ct, &t, 0x82):
        if t.vlen == 0 or t.val[0] > 7:
            return -1
    c.extensions.tag = 0
    if cur_take(&ct, &t, 0xa3):
        cur_init(&cw, &t)
        if cur_next(&cw, &c.extensions) != 1 or c.extensions.tag != 0x30 or cw.n != 0:
            return -1
        cur_init(&cw, &c.extensions)
        while True:
            k = cur_next(&cw, &t)
            if k == 0:
                break
            if k < 0 or not extension_shape_valid(&t):
                return -1
    if ct.n != 0:
        return -1
    c.ok = True
    return 0


cdef bint extension_shape_valid(const Tlv *e) noexcept nogil:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }."""
    cdef Cursor c
    cdef Tlv t
    if e.tag != 0x30:
        return False
    cur_init(&c, e)
    if cur_expect(&c, &t, 0x06) < 0 or not oid_valid(&t):
        return False
    if cur_take(&c, &t, 0x01):
        if not bool_true(&t):
            return False
    if cur_expect(&c, &t, 0x04) < 0:
        return False
    return c.n == 0


cdef void cert_read_extensions(Cert *c) noexcept nogil:
    """Decode the extension values the reference decodes when it asks for extensions."""
    cdef Cursor cw, ce
    cdef Tlv e, oid, t, octets
    cdef const uint8_t *seen[64]
    cdef size_t seen_len[64]
    cdef size_t nseen = 0, i
    cdef int k
    c.ext_ok = True
    c.is_ca = False
    c.has_ski = False
    c.has_akid = False
    if c.extensions.tag == 0:
        # X.509 v1 certificates predate extensions; they count as CAs.
        c.is_ca = c.version == 0
        return
    cur_init(&cw, &c.extensions)
    while True:
        k = cur_next(&cw, &e)
        if k <= 0:
            break
        # The shape was checked by cert_parse (extension_shape_valid).
        cur_init(&ce, &e)
        if cur_next(&ce, &oid) != 1:
            c.ext_ok = False
            return
        cur_take(&ce, &t, 0x01)
        if cur_next(&ce, &octets) != 1:
            c.ext_ok = False
            return
        for i in range(nseen):
            if seen_len[i] == oid.vlen and memcmp(seen[i], oid.val, oid.vlen) == 0:
                c.ext_ok = False    # duplicate extension
                return
        if nseen < 64:
            seen[nseen] = oid.val
            seen_len[nseen] = oid.vlen
            nseen += 1
        if ext_value_check(&oid, &octets, c) < 0:
            c.ext_ok = False
            return


cdef int general_names_check(const Tlv *seq) noexcept nogil:
    cdef Cursor c, w
    cdef Tlv g, x, oid
    cdef bint dec
    cdef int k
    if seq.tag != 0x30:
        return -1
    cur_init(&c, seq)
    while True:
        k = cur_next(&c, &g)
        if k == 0:
            return 0
        if k < 0:
            return -1
        if g.tag == 0xa0:
            cur_init(&w, &g)
            if cur_expect(&w, &oid, 0x06) < 0 or not oid_valid(&oid):
                return -1
            if cur_expect(&w, &x, 0xa0) < 0 or w.n != 0:
                return -1
            cur_init(&w, &x)
            if cur_next(&w, &x) != 1 or w.n != 0:
                return -1
        elif g.tag == 0x81 or g.tag == 0x82 or g.tag == 0x86:
            if not utf8_valid(g.val, g.vlen):
                return -1
        elif g.tag == 0xa4:
            cur_init(&w, &g)
            if cur_next(&w, &x) != 1 or w.n != 0 or name_check(&x, &dec, NULL, NULL, NULL) < 0 \
                    or not dec:
                return -1
        elif g.tag == 0x87:
            if g.vlen != 4 and g.vlen != 16:
                return -1
        elif g.tag == 0x88:
            x = g
            x.tag = 0x06
            if not oid_valid(&x):
                return -1
        else:
            return -1


cdef int ext_value_check(const Tlv *oid, const Tlv *octets, Cert *c) noexcept nogil:
    """One extension value, for the extensions the reference decodes eagerly."""
    cdef Tlv v, t
    cdef Cursor w
    cdef uint64_t n
    cdef bint ca = False, has_len = False, has_issuer = False, has_serial = False
    cdef int bits
    if not oid_has_prefix(oid, PF_OID_CE, 2):
        return 0
    if der_read(octets.val, octets.vlen, &v) < 0 or v.tlen != octets.vlen:
        return -1
    if oid.val[2] == 19:                        # basicConstraints
        if v.tag != 0x30:
            return -1
        cur_init(&w, &v)
        if cur_take(&w, &t, 0x01):
            if not bool_true(&t):
                return -1
            ca = True
        if cur_take(&w, &t, 0x02):
            if not uint_small(&t, PF_U64_MAX, &n):
                return -1
            has_len = True
        if w.n != 0 or (has_len and not ca):
            return -1
        c.is_ca = ca
    elif oid.val[2] == 14:                      # subjectKeyIdentifier
        if v.tag != 0x04:
            return -1
        c.has_ski = True
        c.ski = v.val
        c.ski_len = v.vlen
    elif oid.val[2] == 15:                      # keyUsage
        if not bitstring_valid(&v):
            return -1
        # encipherOnly / decipherOnly only together with keyAgreement
        bits = 0
        if v.vlen > 1:
            bits = v.val[1] << 8
        if v.vlen > 2:
            bits |= v.val[2]
        # bit 4 keyAgreement (0x0800), bit 7 encipherOnly (0x0100), bit 8 decipherOnly (0x0080)
        if (bits & 0x0180) and not (bits & 0x0800):
            return -1
    elif oid.val[2] == 35:                      # authorityKeyIdentifier
        if v.tag != 0x30:
            return -1
        cur_init(&w, &v)
        if cur_take(&w, &t, 0x80):              # keyIdentifier
            c.has_akid = True
            c.akid = t.val
            c.akid_len = t.vlen
        if cur_take(&w, &t, 0xa1):
            t.tag = 0x30
            if general_names_check(&t) < 0:
                return -1
            has_issuer = True
        if cur_take(&w, &t, 0x82):
            t.tag = 0x02
            if not int_valid(&t) or t.val[0] & 0x80:
                return -1
            has_serial = True
        if w.n != 0 or has_issuer != has_serial:
            return -1
    elif oid.val[2] == 37:                      # extKeyUsage
        if v.tag != 0x30:
            return -1
        cur_init(&w, &v)
        while w.n:
            if cur_next(&w, &t) != 1 or not oid_valid(&t):
                return -1
    elif oid.val[2] == 17 or oid.val[2] == 18:  # subject / issuer alternative names
        return general_names_check(&v)
    return 0


cdef bint explicit_curve_accepted(EVP_PKEY *pkey) noexcept nogil:
    """Explicit EC parameters: only those of the profile's EXPLICIT_CURVES (libcrypto
    names the curve they match)."""
    cdef char group[32]
    cdef size_t group_len = 0
    cdef int i
    cdef bint found = False
    if EVP_PKEY_get_group_name(pkey, group, sizeof(group), &group_len) == 1:
        for i in range(N_EXPLICIT_CURVES):
            if strcmp(group, PF_EXPLICIT_CURVES[i]) == 0:
                found = True
    ERR_clear_error()
    return found


cdef void cert_load_key(Cert *c) noexcept nogil:
    """The certificate's public key through libcrypto, and its kind (K_*)."""
    cdef const unsigned char *p = c.spki.hdr
    cdef int base
    cdef bint explicit_curve
    c.pkey = NULL
    c.key_kind = spki_key_kind(&c.spki, &explicit_curve)
    if c.key_kind != K_OTHER:
        return
    c.key_kind = K_BAD
    c.pkey = d2i_PUBKEY(NULL, &p, <long>c.spki.tlen)
    if c.pkey == NULL or p != c.spki.hdr + c.spki.tlen:
        if c.pkey != NULL:
            EVP_PKEY_free(c.pkey)
            c.pkey = NULL
        ERR_clear_error()
        return
    base = EVP_PKEY_get_base_id(c.pkey)
    if base == EVP_PKEY_EC:
        c.key_kind = K_EC
        if explicit_curve and not explicit_curve_accepted(c.pkey):
            c.key_kind = K_UNSUPPORTED
    elif base == EVP_PKEY_RSA or base == EVP_PKEY_RSA_PSS:
        c.key_kind = K_RSA
    elif base == EVP_PKEY_ED25519:
        c.key_kind = K_ED25519
    elif base == EVP_PKEY_ED448:
        c.key_kind = K_ED448
    elif base == EVP_PKEY_DSA:
        c.key_kind = K_DSA
    else:
        c.key_kind = K_OTHER
