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
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strcmp

include "_libcrypto.pxi"

# --------------------------------------------------------------------------- results

# Result codes; pledgeforge.fastpath.Result mirrors them.
cdef enum:
    R_OK = 0
    R_MALFORMED = 1
    R_UNEXPECTED_CONTENT_TYPE = 2
    R_DIGEST_MISMATCH = 3
    R_BAD_SIGNATURE = 4
    R_UNTRUSTED_SIGNER = 5
    R_EXPIRED = 6

# Hashes.
cdef enum:
    H_NONE = 0
    H_SHA1 = 1
    H_SHA224 = 2
    H_SHA256 = 3
    H_SHA384 = 4
    H_SHA512 = 5
    H_SHA3_224 = 6
    H_SHA3_256 = 7
    H_SHA3_384 = 8
    H_SHA3_512 = 9
    H_COUNT = 10

# Public key kinds.
cdef enum:
    K_BAD = 0       # libcrypto could not load the key
    K_EC = 1
    K_RSA = 2
    K_ED25519 = 3
    K_ED448 = 4
    K_DSA = 5
    K_OTHER = 6     # loads, but signs nothing the reference verifies (X25519, DH, ...)
    K_UNSUPPORTED = 7   # a key type or curve the reference refuses to load at all

# Signature schemes.
cdef enum:
    S_UNSUPPORTED = 0
    S_ECDSA = 1
    S_RSA_PKCS1 = 2
    S_RSA_PSS = 3
    S_ED25519 = 4
    S_ED448 = 5
    S_DSA = 6

cdef enum:
    MAX_DEPTH = 8           # certificates in a path before the anchor, as hsm.chain
    MAX_NESTING = 64        # constructed elements inside each other in one item
    CHAIN_BUDGET = 4096     # path-building steps per item: hostile inputs cannot hang a worker
    PAIR_SLOTS = 4          # cached "signed by" results per certificate
    CTX_SLOTS = 64          # cached verify contexts per worker
    CLAIM = 8               # items a worker claims at once

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
    ALG_NESTING = 8         # AlgorithmIdentifiers inside parameters (PSS hashes, PBES2)


cdef extern from *:
    """
    /* DER contents of the object identifiers the fastpath recognises. */
    #include <stdint.h>
    #define PF_U64_MAX UINT64_MAX
    #define PF_FNV_OFFSET UINT64_C(0xcbf29ce484222325)
    #define PF_FNV_PRIME UINT64_C(0x100000001b3)
    static inline void pf_count(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    static const unsigned char PF_OID_SIGNED_DATA[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x07,0x02};
    static const unsigned char PF_OID_DATA[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x07,0x01};
    static const unsigned char PF_OID_VOUCHER[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x10,0x01,0x28};
    static const unsigned char PF_OID_ATTR_CT[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x03};
    static const unsigned char PF_OID_ATTR_MD[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x04};
    static const unsigned char PF_OID_ATTR_ST[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x05};
    static const unsigned char PF_OID_PKCS9[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09};          /* + n */
    static const unsigned char PF_OID_SMIME_AA[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x10,0x02}; /* + n */
    static const unsigned char PF_OID_MS_NESTED_SIG[] = {0x2b,0x06,0x01,0x04,0x01,0x82,0x37,0x02,0x04,0x01};
    static const unsigned char PF_OID_MS_TIMESTAMP[] = {0x2b,0x06,0x01,0x04,0x01,0x82,0x37,0x03,0x03,0x01};
    /* Teletex (T.61) octets the reference's codec maps to nothing. */
    static const unsigned char PF_TELETEX_UNDEFINED[256] = {
        [35]=1, [36]=1, [92]=1, [94]=1, [96]=1, [123]=1, [125]=1, [126]=1, [169]=1, [170]=1,
        [172]=1, [173]=1, [174]=1, [175]=1, [185]=1, [186]=1, [192]=1, [201]=1,
        [208]=1, [209]=1, [210]=1, [211]=1, [212]=1, [213]=1, [214]=1, [215]=1, [216]=1,
        [217]=1, [218]=1, [219]=1, [220]=1, [221]=1, [222]=1, [223]=1, [229]=1, [255]=1};
    static const unsigned char PF_OID_SHA1[] = {0x2b,0x0e,0x03,0x02,0x1a};
    static const unsigned char PF_OID_NIST_HASH[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x02};   /* + n */
    static const unsigned char PF_OID_NIST_SIG[] = {0x60,0x86,0x48,0x01,0x65,0x03,0x04,0x03};    /* + n */
    static const unsigned char PF_OID_ECDSA[] = {0x2a,0x86,0x48,0xce,0x3d,0x04};                 /* 1.2.840.10045.4 */
    static const unsigned char PF_OID_EC_PUBKEY[] = {0x2a,0x86,0x48,0xce,0x3d,0x02,0x01};
    static const unsigned char PF_OID_PKCS1[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x01};       /* + n */
    static const unsigned char PF_OID_SHA1_RSA_ALT[] = {0x2b,0x0e,0x03,0x02,0x1d};
    static const unsigned char PF_OID_DSA[] = {0x2a,0x86,0x48,0xce,0x38,0x04,0x01};
    static const unsigned char PF_OID_EDWARDS[] = {0x2b,0x65};                                    /* + 0x6e..0x71 */
    static const unsigned char PF_OID_AT_SERIAL[] = {0x55,0x04,0x05};
    static const unsigned char PF_OID_AT_UNIQUE_ID[] = {0x55,0x04,0x2d};
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
    /* Named curves the reference loads keys on: P-192, P-256, P-224, P-384, P-521,
       secp256k1, brainpoolP256r1/P384r1/P512r1. */
    static const unsigned char PF_OID_X962_CURVE[] = {0x2a,0x86,0x48,0xce,0x3d,0x03,0x01};       /* + 1, 7 */
    static const unsigned char PF_OID_SECG_CURVE[] = {0x2b,0x81,0x04,0x00};                      /* + 0x21..0x23, 0x0a */
    static const unsigned char PF_OID_BRAINPOOL[] = {0x2b,0x24,0x03,0x03,0x02,0x08,0x01,0x01};   /* + 7, 11, 13 */
    /* DER of the default PBKDF2 prf (hmacWithSHA1), which DER forbids spelling out. */
    static const unsigned char PF_PBKDF2_PRF_DEFAULT[] = {0x30,0x0c,0x06,0x08,0x2a,0x86,0x48,0x86,0xf7,0x0d,0x02,0x07,0x05,0x00};
    /* DER of the defaults RSASSA-PSS-params must not spell out. */
    static const unsigned char PF_PSS_SHA1_DEFAULT[] = {0x30,0x09,0x06,0x05,0x2b,0x0e,0x03,0x02,0x1a,0x05,0x00};
    static const unsigned char PF_PSS_MGF1_DEFAULT[] = {0x30,0x16,0x06,0x09,0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x01,0x08,
                                                       0x30,0x09,0x06,0x05,0x2b,0x0e,0x03,0x02,0x1a,0x05,0x00};
    """
    uint64_t PF_U64_MAX
    uint64_t PF_FNV_OFFSET
    uint64_t PF_FNV_PRIME
    void pf_count(uint64_t *p) nogil
    const uint8_t PF_OID_SIGNED_DATA[9]
    const uint8_t PF_OID_DATA[9]
    const uint8_t PF_OID_VOUCHER[11]
    const uint8_t PF_OID_ATTR_CT[9]
    const uint8_t PF_OID_ATTR_MD[9]
    const uint8_t PF_OID_ATTR_ST[9]
    const uint8_t PF_OID_PKCS9[8]
    const uint8_t PF_OID_SMIME_AA[10]
    const uint8_t PF_OID_MS_NESTED_SIG[10]
    const uint8_t PF_OID_MS_TIMESTAMP[10]
    const uint8_t PF_TELETEX_UNDEFINED[256]
    const uint8_t PF_OID_SHA1[5]
    const uint8_t PF_OID_NIST_HASH[8]
    const uint8_t PF_OID_NIST_SIG[8]
    const uint8_t PF_OID_ECDSA[6]
    const uint8_t PF_OID_EC_PUBKEY[7]
    const uint8_t PF_OID_PKCS1[8]
    const uint8_t PF_OID_SHA1_RSA_ALT[5]
    const uint8_t PF_OID_DSA[7]
    const uint8_t PF_OID_EDWARDS[2]
    const uint8_t PF_OID_AT_SERIAL[3]
    const uint8_t PF_OID_AT_UNIQUE_ID[3]
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
    const uint8_t PF_OID_X962_CURVE[7]
    const uint8_t PF_OID_SECG_CURVE[4]
    const uint8_t PF_OID_BRAINPOOL[8]
    const uint8_t PF_PBKDF2_PRF_DEFAULT[14]
    const uint8_t PF_PSS_SHA1_DEFAULT[11]
    const uint8_t PF_PSS_MGF1_DEFAULT[24]

# --------------------------------------------------------------------------- DER reader

cdef struct Tlv:
    const uint8_t *hdr      # identifier octet
    const uint8_t *val      # first content octet
    size_t vlen             # content length
    size_t tlen             # header + content
    int tag                 # identifier octet (low tag numbers only)


cdef inline int der_read(const uint8_t *p, size_t n, Tlv *t) noexcept nogil:
    """One element at p, within n bytes: 0, or -1 if it is not DER or overruns n."""
    cdef size_t hl, l, k, i
    if n < 2 or (p[0] & 0x1f) == 0x1f:
        return -1
    if p[1] < 0x80:
        l = p[1]
        hl = 2
    else:
        k = p[1] & 0x7f
        # No indefinite lengths, no lengths over 4 GiB, no padding.
        if k == 0 or k > 4 or n < 2 + k or p[2] == 0:
            return -1
        l = 0
        for i in range(k):
            l = (l << 8) | p[2 + i]
        if l < 0x80:
            return -1
        hl = 2 + k
    if l > n - hl:
        return -1
    t.hdr = p
    t.val = p + hl
    t.vlen = l
    t.tlen = hl + l
    t.tag = p[0]
    return 0


cdef struct Cursor:
    const uint8_t *p
    size_t n


cdef inline void cur_init(Cursor *c, const Tlv *t) noexcept nogil:
    c.p = t.val
    c.n = t.vlen


cdef inline int cur_next(Cursor *c, Tlv *t) noexcept nogil:
    """The next element of a constructed value: 1, 0 at the end, -1 if malformed."""
    if c.n == 0:
        return 0
    if der_read(c.p, c.n, t) < 0:
        return -1
    c.p += t.tlen
    c.n -= t.tlen
    return 1


cdef inline int cur_expect(Cursor *c, Tlv *t, int tag) noexcept nogil:
    """The next element, which must carry `tag`: 0 or -1."""
    if cur_next(c, t) != 1 or t.tag != tag:
        return -1
    return 0


cdef inline bint cur_take(Cursor *c, Tlv *t, int tag) noexcept nogil:
    """An OPTIONAL element: read the next one only if it carries `tag` and reads; whether it did."""
    return c.n > 0 and c.p[0] == tag and cur_next(c, t) == 1


cdef bint der_framed(const uint8_t *p, size_t n) noexcept nogil:
    """Whether the item is DER-framed: exactly one element; every element, through
    every constructed one, read by der_read (low tag number, definite minimal length);
    universal constructed elements only SEQUENCE and SET (no BER constructed strings);
    at most MAX_NESTING constructed elements deep. pledgeforge.fastpath.der_framing
    applies the same rule before the reference verifier (which also reads BER) and in
    the stream reader."""
    cdef size_t ends[MAX_NESTING]
    cdef int depth = 0
    cdef size_t pos = 0, limit
    cdef Tlv t
    if n == 0:
        return False
    while True:
        while depth > 0 and pos == ends[depth - 1]:
            depth -= 1
        if depth == 0 and pos > 0:
            return pos == n
        limit = ends[depth - 1] if depth > 0 else n
        if der_read(p + pos, limit - pos, &t) < 0:
            return False
        if t.tag & 0x20:
            if (t.tag & 0xc0) == 0 and t.tag != 0x30 and t.tag != 0x31:
                return False
            if depth == MAX_NESTING:
                return False
            ends[depth] = pos + t.tlen
            depth += 1
            pos += t.tlen - t.vlen
        else:
            pos += t.tlen


cdef inline bint oid_is(const Tlv *t, const uint8_t *oid, size_t n) noexcept nogil:
    return t.vlen == n and memcmp(t.val, oid, n) == 0


cdef inline bint oid_has_prefix(const Tlv *t, const uint8_t *oid, size_t n) noexcept nogil:
    """OID = prefix + one final arc octet."""
    return t.vlen == n + 1 and memcmp(t.val, oid, n) == 0


cdef bint oid_valid(const Tlv *t) noexcept nogil:
    """Base-128 arcs without padding octets, the last one terminated."""
    cdef size_t i
    if t.tag != 0x06 or t.vlen == 0 or t.vlen > 63:
        return False
    if t.val[t.vlen - 1] & 0x80:
        return False
    for i in range(t.vlen):
        if t.val[i] == 0x80 and (i == 0 or not (t.val[i - 1] & 0x80)):
            return False
    return True


cdef bint int_valid(const Tlv *t) noexcept nogil:
    """A minimally encoded INTEGER."""
    if t.tag != 0x02 or t.vlen == 0:
        return False
    if t.vlen > 1:
        if t.val[0] == 0 and t.val[1] < 0x80:
            return False
        if t.val[0] == 0xff and t.val[1] >= 0x80:
            return False
    return True


cdef bint uint_small(const Tlv *t, uint64_t maxval, uint64_t *out) noexcept nogil:
    """A minimal non-negative INTEGER no larger than maxval."""
    cdef uint64_t v = 0
    cdef size_t i
    if not int_valid(t) or t.val[0] & 0x80 or t.vlen > 9:
        return False
    for i in range(t.vlen):
        if v > (maxval >> 8) and i > 0:
            return False
        v = (v << 8) | t.val[i]
    if v > maxval:
        return False
    out[0] = v
    return True


cdef bint bitstring_valid(const Tlv *t) noexcept nogil:
    """DER BIT STRING: unused-bit count under 8, zero padding bits."""
    if t.tag != 0x03 or t.vlen == 0 or t.val[0] > 7:
        return False
    if t.vlen == 1:
        return t.val[0] == 0
    return (t.val[t.vlen - 1] & ((1 << t.val[0]) - 1)) == 0


cdef bint null_valid(const Tlv *t) noexcept nogil:
    return t.tag == 0x05 and t.vlen == 0


cdef bint bool_true(const Tlv *t) noexcept nogil:
    """A BOOLEAN DEFAULT FALSE that is present must be TRUE (0xff) in DER."""
    return t.tag == 0x01 and t.vlen == 1 and t.val[0] == 0xff


# --------------------------------------------------------------------------- time

cdef inline int two_digits(const uint8_t *p) noexcept nogil:
    if p[0] < 0x30 or p[0] > 0x39 or p[1] < 0x30 or p[1] > 0x39:
        return -1
    return (p[0] - 0x30) * 10 + (p[1] - 0x30)


cdef inline bint leap(int64_t y) noexcept nogil:
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


cdef int days_in_month(int64_t y, int m) noexcept nogil:
    if m == 2:
        return 29 if leap(y) else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


cdef int64_t days_from_civil(int64_t y, int m, int d) noexcept nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (9 if m <= 2 else -3)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int civil_seconds(int64_t year, int mon, int day, int hour, int minute, int sec,
                       int64_t *out) noexcept nogil:
    if mon < 1 or mon > 12 or day < 1 or day > days_in_month(year, mon):
        return -1
    if hour < 0 or hour > 23 or minute < 0 or minute > 59 or sec < 0 or sec > 59:
        return -1
    out[0] = days_from_civil(year, mon, day) * 86400 + hour * 3600 + minute * 60 + sec
    return 0


cdef int x509_time(const Tlv *t, int64_t *out) noexcept nogil:
    """Certificate validity time: UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ."""
    cdef const uint8_t *p = t.val
    cdef int64_t year
    cdef int yy, cc, i
    cdef int f[5]
    if t.tag == 0x17 and t.vlen == 13 and p[12] == 0x5a:
        yy = two_digits(p)
        if yy < 0:
            return -1
        year = 2000 + yy if yy < 50 else 1900 + yy
        p += 2
    elif t.tag == 0x18 and t.vlen == 15 and p[14] == 0x5a:
        cc = two_digits(p)
        yy = two_digits(p + 2)
        if cc < 0 or yy < 0:
            return -1
        year = cc * 100 + yy
        p += 4
    else:
        return -1
    for i in range(5):
        f[i] = two_digits(p + 2 * i)
        if f[i] < 0:
            return -1
    return civil_seconds(year, f[0], f[1], f[2], f[3], f[4], out)


cdef bint digits(const uint8_t *p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i] < 0x30 or p[i] > 0x39:
            return False
    return True


cdef bint attr_time_valid(const Tlv *t) noexcept nogil:
    """signingTime as the reference reads it: the BER time forms, with a valid date."""
    cdef const uint8_t *p = t.val
    cdef size_t n = t.vlen, pos, frac
    cdef int64_t year, ignored
    cdef int mon, day, hour, minute = 0, sec = 0
    if t.tag == 0x17:
        # YYMMDDhhmm[ss](Z|+hhmm|-hhmm)
        if n < 11 or not digits(p, 10):
            return False
        year = two_digits(p)
        year += 2000 if year < 50 else 1900
        pos = 10
        if n > pos + 1 and digits(p + pos, 2):
            sec = two_digits(p + pos)
            pos += 2
        if not (n == pos + 1 and p[pos] == 0x5a) and \
                not (n == pos + 5 and (p[pos] == 0x2b or p[pos] == 0x2d) and digits(p + pos + 1, 4)
                     and two_digits(p + pos + 1) < 24 and two_digits(p + pos + 3) < 60):
            return False
        p += 2
    elif t.tag == 0x18:
        # YYYYMMDDhh[mm[ss[.fff]]][Z|+hhmm|-hhmm]
        if n < 10 or not digits(p, 10):
            return False
        year = two_digits(p) * 100 + two_digits(p + 2)
        pos = 10
        if n >= pos + 2 and digits(p + pos, 2):
            minute = two_digits(p + pos)
            pos += 2
            if n >= pos + 2 and digits(p + pos, 2):
                sec = two_digits(p + pos)
                pos += 2
                if n > pos and (p[pos] == 0x2e or p[pos] == 0x2c):
                    frac = pos + 1
                    pos += 1
                    while pos < n and p[pos] >= 0x30 and p[pos] <= 0x39:
                        pos += 1
                    if pos == frac:
                        return False
        if not (n == pos or (n == pos + 1 and p[pos] == 0x5a) or
                (n == pos + 5 and (p[pos] == 0x2b or p[pos] == 0x2d) and digits(p + pos + 1, 4)
                 and two_digits(p + pos + 1) < 24 and two_digits(p + pos + 3) < 60)):
            return False
        if year == 0:
            return False
        p += 4
        mon = two_digits(p)
        day = two_digits(p + 2)
        hour = two_digits(p + 4)
        return civil_seconds(year, mon, day, hour, minute, sec, &ignored) == 0
    else:
        return False
    mon = two_digits(p)
    day = two_digits(p + 2)
    hour = two_digits(p + 4)
    minute = two_digits(p + 6)
    return civil_seconds(year, mon, day, hour, minute, sec, &ignored) == 0


# --------------------------------------------------------------------------- text

cdef bint utf8_valid(const uint8_t *s, size_t n) noexcept nogil:
    """Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF."""
    cdef size_t i = 0, k, j
    cdef uint32_t c, lo
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if 0xc2 <= c <= 0xdf:
            k = 1
            lo = 0x80
            c &= 0x1f
        elif 0xe0 <= c <= 0xef:
            k = 2
            lo = 0x800
            c &= 0x0f
        elif 0xf0 <= c <= 0xf4:
            k = 3
            lo = 0x10000
            c &= 0x07
        else:
            return False
        if n - i <= k:
            return False
        for j in range(1, k + 1):
            if (s[i + j] & 0xc0) != 0x80:
                return False
            c = (c << 6) | (s[i + j] & 0x3f)
        if c < lo or c > 0x10ffff or 0xd800 <= c <= 0xdfff:
            return False
        i += k + 1
    return True


cdef bint utf16be_valid(const uint8_t *s, size_t n) noexcept nogil:
    cdef size_t i = 0
    cdef uint32_t u, v
    if n % 2:
        return False
    while i < n:
        u = (s[i] << 8) | s[i + 1]
        i += 2
        if u >= 0xd800 and u <= 0xdbff:
            if i >= n:
                return False
            v = (s[i] << 8) | s[i + 1]
            if v < 0xdc00 or v > 0xdfff:
                return False
            i += 2
        elif u >= 0xdc00 and u <= 0xdfff:
            return False
    return True


cdef bint utf32be_valid(const uint8_t *s, size_t n) noexcept nogil:
    cdef size_t i
    cdef uint32_t u
    if n % 4:
        return False
    i = 0
    while i < n:
        u = (<uint32_t>s[i] << 24) | (<uint32_t>s[i + 1] << 16) | (<uint32_t>s[i + 2] << 8) | s[i + 3]
        if u > 0x10ffff or (u >= 0xd800 and u <= 0xdfff):
            return False
        i += 4
    return True


cdef bint name_value_decodable(const Tlv *oid, const Tlv *v) noexcept nogil:
    """Whether the reference can turn a name attribute into text (or bytes)."""
    cdef bint unique_id = oid_is(oid, PF_OID_AT_UNIQUE_ID, 3)
    if v.tag == 0x03:
        return unique_id
    if unique_id:
        return False
    if v.tag == 0x1e:
        return utf16be_valid(v.val, v.vlen)
    if v.tag == 0x1c:
        return utf32be_valid(v.val, v.vlen)
    if v.tag == 0x04 or v.tag == 0x0c or v.tag == 0x12 or v.tag == 0x13 or v.tag == 0x14 or \
            v.tag == 0x16 or v.tag == 0x17 or v.tag == 0x18 or v.tag == 0x1a:
        return utf8_valid(v.val, v.vlen)
    return False


cdef bint printable_char(uint8_t ch) noexcept nogil:
    return (0x41 <= ch <= 0x5a) or (0x61 <= ch <= 0x7a) or (0x30 <= ch <= 0x39) or ch == 0x20 \
        or ch == 0x27 or ch == 0x28 or ch == 0x29 or ch == 0x2b or ch == 0x2c or ch == 0x2d \
        or ch == 0x2e or ch == 0x2f or ch == 0x3a or ch == 0x3d or ch == 0x3f


cdef bint name_value_loads(const Tlv *v) noexcept nogil:
    """String types the reference's X.509 parser validates while loading a certificate."""
    cdef size_t i
    if v.tag == 0x13:
        for i in range(v.vlen):
            if not printable_char(v.val[i]):
                return False
    elif v.tag == 0x1e:
        return utf16be_valid(v.val, v.vlen)
    elif v.tag == 0x1c:
        return utf32be_valid(v.val, v.vlen)
    return True


cdef int der_order(const Tlv *a, const Tlv *b) noexcept nogil:
    """Compare two encodings as the reference orders SET OF elements: <0, 0, >0."""
    cdef size_t n = a.tlen if a.tlen < b.tlen else b.tlen
    cdef int c = memcmp(a.hdr, b.hdr, n)
    if c != 0:
        return c
    return (a.tlen > b.tlen) - (a.tlen < b.tlen)


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
            if serial != NULL and serial[0] == NULL and oid_is(&oid, PF_OID_AT_SERIAL, 3):
                serial[0] = val.val
                serial_len[0] = val.vlen
                serial_tag[0] = val.tag
        if count == 0:
            decodable[0] = False
    return 0


# --------------------------------------------------------------------------- algorithms

cdef int nist_hash(const Tlv *oid) noexcept nogil:
    """SHA-1, SHA-2 and SHA-3 by OID (2.16.840.1.101.3.4.2.n), H_NONE otherwise."""
    if oid_is(oid, PF_OID_SHA1, 5):
        return H_SHA1
    if oid_has_prefix(oid, PF_OID_NIST_HASH, 8):
        if oid.val[8] == 1:
            return H_SHA256
        if oid.val[8] == 2:
            return H_SHA384
        if oid.val[8] == 3:
            return H_SHA512
        if oid.val[8] == 4:
            return H_SHA224
        if 7 <= oid.val[8] <= 10:
            return sha3_by_index(oid.val[8] - 7)
    return H_NONE


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


cdef struct AlgId:
    Tlv oid
    Tlv params
    bint has_params


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


cdef bint biguint_valid(const Tlv *t) noexcept nogil:
    """A minimal non-negative INTEGER of any size."""
    return int_valid(t) and not (t.val[0] & 0x80)


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
        hash_id[0] = nist_hash(&a.oid)
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
        mgf_hash[0] = nist_hash(&a.oid)
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


cdef int sha2_by_index(int i) noexcept nogil:
    """ecdsa-with-SHA224..512 and sha224..512WithRSA order their arcs differently; callers map."""
    if i == 0:
        return H_SHA224
    if i == 1:
        return H_SHA256
    if i == 2:
        return H_SHA384
    if i == 3:
        return H_SHA512
    return H_NONE


cdef int sha3_by_index(int i) noexcept nogil:
    """SHA3-224..512 in arc order (hashes, ecdsa-with-SHA3-*, id-rsassa-pkcs1-v1_5-with-sha3-*)."""
    if i == 0:
        return H_SHA3_224
    if i == 1:
        return H_SHA3_256
    if i == 2:
        return H_SHA3_384
    if i == 3:
        return H_SHA3_512
    return H_NONE


cdef bint is_ed25519(const Tlv *oid) noexcept nogil:
    return oid_has_prefix(oid, PF_OID_EDWARDS, 2) and oid.val[2] == 0x70


cdef bint is_ed448(const Tlv *oid) noexcept nogil:
    return oid_has_prefix(oid, PF_OID_EDWARDS, 2) and oid.val[2] == 0x71


cdef void cert_signature_scheme(const AlgId *a, int *scheme, int *hash_id, int *mgf,
                                uint64_t *salt, bint *uncheckable) noexcept nogil:
    """How the reference (cryptography's verify_directly_issued_by) treats a certificate
    signature algorithm. S_UNSUPPORTED: it declines (SHA-1, MD5, DSA with SHA-3, PSS
    without parameters or without MGF1, unknown algorithms), so the issuer did not sign
    this certificate as far as it is concerned. `uncheckable`: it knows the key type
    but raises on the hash (DSA with SHA-384/512, PSS with another hash), which makes
    the item MALFORMED once an issuer's key fits."""
    cdef uint8_t last
    cdef bint mgf1
    scheme[0] = S_UNSUPPORTED
    hash_id[0] = H_NONE
    salt[0] = 0
    mgf[0] = H_NONE
    uncheckable[0] = False
    if a.oid.vlen == 8 and memcmp(a.oid.val, PF_OID_ECDSA, 6) == 0 and a.oid.val[6] == 0x03 \
            and 1 <= a.oid.val[7] <= 4:
        scheme[0] = S_ECDSA
        hash_id[0] = sha2_by_index(a.oid.val[7] - 1)
    elif oid_has_prefix(&a.oid, PF_OID_NIST_SIG, 8):
        last = a.oid.val[8]
        if 1 <= last <= 4:
            scheme[0] = S_DSA
            hash_id[0] = sha2_by_index(last - 1)
            uncheckable[0] = last >= 3
        elif 9 <= last <= 12:
            scheme[0] = S_ECDSA
            hash_id[0] = sha3_by_index(last - 9)
        elif 13 <= last <= 16:
            scheme[0] = S_RSA_PKCS1
            hash_id[0] = sha3_by_index(last - 13)
    elif oid_has_prefix(&a.oid, PF_OID_PKCS1, 8):
        last = a.oid.val[8]
        if 11 <= last <= 13:
            scheme[0] = S_RSA_PKCS1
            hash_id[0] = sha2_by_index(last - 10)
        elif last == 14:
            scheme[0] = S_RSA_PKCS1
            hash_id[0] = H_SHA224
        elif last == 10 and a.has_params:
            if pss_params_check(&a.params, hash_id, mgf, &mgf1, salt, ALG_NESTING) == 0 and mgf1:
                scheme[0] = S_RSA_PSS
                uncheckable[0] = hash_id[0] == H_NONE or mgf[0] == H_NONE
    elif is_ed25519(&a.oid):
        scheme[0] = S_ED25519
    elif is_ed448(&a.oid):
        scheme[0] = S_ED448


# --------------------------------------------------------------------------- certificates

cdef enum:
    CS_PARSING = 0
    CS_READY = 1

cdef struct PairSlot:
    uint64_t parent_id
    int state           # 0 empty, 1 in progress, 2 done
    int result          # 1 signed by the parent, 0 not, -1 the reference cannot check it


cdef struct Cert:
    uint64_t id
    uint64_t hash
    uint64_t last_used
    int state
    bint pinned
    int anchor_index            # position among the anchors, -1 otherwise
    uint8_t *der
    size_t der_len
    bint ok                     # parses as the reference's X.509 parser requires
    # set when ok:
    Tlv tbs
    Tlv tbs_sigalg
    Tlv sigalg
    Tlv issuer
    Tlv subject
    Tlv serial
    Tlv spki
    Tlv extensions              # [3] contents, tag 0 when absent
    const uint8_t *sig
    size_t sig_len
    int version
    int64_t not_before
    int64_t not_after
    bint issuer_decodable
    bint subject_decodable
    const uint8_t *sn_attr
    size_t sn_len
    int sn_tag
    int scheme
    int sig_hash
    int pss_mgf
    uint64_t pss_salt
    bint sig_uncheckable
    # extensions as the reference reads them (on first use)
    bint ext_ok                 # every extension value the reference decodes is readable
    bint is_ca
    bint has_ski
    const uint8_t *ski
    size_t ski_len
    bint has_akid               # authorityKeyIdentifier with a keyIdentifier
    const uint8_t *akid
    size_t akid_len
    # public key
    EVP_PKEY *pkey
    int key_kind
    PairSlot pairs[PAIR_SLOTS]
    unsigned int pair_next


cdef bint key_type_known(const Tlv *oid) noexcept nogil:
    """Public key algorithms the reference can load (others: it raises, not just fails)."""
    cdef uint8_t last
    if oid_has_prefix(oid, PF_OID_PKCS1, 8):
        return oid.val[8] == 1 or oid.val[8] == 10            # rsaEncryption, RSASSA-PSS
    if oid_has_prefix(oid, PF_OID_EDWARDS, 2):
        return 0x6e <= oid.val[2] <= 0x71                      # X25519, X448, Ed25519, Ed448
    if oid_has_prefix(oid, PF_OID_NIST_SIG, 8):
        return 17 <= oid.val[8] <= 19                          # ML-DSA
    if oid_has_prefix(oid, PF_OID_NIST_KEM, 8):
        return 2 <= oid.val[8] <= 3                            # ML-KEM-768/1024
    return oid_is(oid, PF_OID_EC_PUBKEY, 7) or oid_is(oid, PF_OID_DSA, 7) or \
        oid_is(oid, PF_OID_DHX, 7) or oid_is(oid, PF_OID_DH_AGREEMENT, 9)


cdef bint named_curve_known(const Tlv *oid) noexcept nogil:
    if oid_has_prefix(oid, PF_OID_X962_CURVE, 7):
        return oid.val[7] == 1 or oid.val[7] == 7
    if oid_has_prefix(oid, PF_OID_SECG_CURVE, 4):
        return 0x21 <= oid.val[4] <= 0x23 or oid.val[4] == 0x0a
    if oid_has_prefix(oid, PF_OID_BRAINPOOL, 8):
        return oid.val[8] == 7 or oid.val[8] == 11 or oid.val[8] == 13
    return False


cdef int spki_key_kind(const Tlv *spki, bint *explicit_curve) noexcept nogil:
    """K_UNSUPPORTED where the reference refuses the key before looking at it (unknown
    type, unsupported named curve, implicit curve), K_BAD where it cannot read it,
    otherwise K_OTHER: libcrypto decides."""
    cdef Cursor c
    cdef Tlv alg, bits
    cdef AlgId a
    explicit_curve[0] = False
    cur_init(&c, spki)
    if cur_next(&c, &alg) != 1 or algid_read(&alg, &a, False) < 0:
        return K_BAD
    if not key_type_known(&a.oid):
        return K_UNSUPPORTED
    if oid_is(&a.oid, PF_OID_EC_PUBKEY, 7):
        if not a.has_params or a.params.tag == 0x05:
            return K_UNSUPPORTED
        if a.params.tag == 0x06 and not named_curve_known(&a.params):
            return K_UNSUPPORTED
        explicit_curve[0] = a.params.tag == 0x30
    if cur_next(&c, &bits) != 1 or bits.vlen == 0 or bits.val[0] != 0:
        return K_BAD        # a key is whole octets
    return K_OTHER


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


cdef void cert_load_key(Cert *c) noexcept nogil:
    cdef const unsigned char *p = c.spki.hdr
    cdef int base
    cdef bint explicit_curve
    cdef char group[32]
    cdef size_t group_len = 0
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
        # Explicit parameters: only those of P-256, P-384 and P-521 (libcrypto names
        # the curve they match).
        if explicit_curve:
            if EVP_PKEY_get_group_name(c.pkey, group, sizeof(group), &group_len) != 1 or \
                    not (strcmp(group, b"prime256v1") == 0 or strcmp(group, b"secp384r1") == 0
                         or strcmp(group, b"secp521r1") == 0):
                c.key_kind = K_UNSUPPORTED
            ERR_clear_error()
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


cdef bint key_fits(int scheme, int key_kind) noexcept nogil:
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


# --------------------------------------------------------------------------- CMS

cdef struct Cms:
    Tlv econtent_type
    Tlv econtent            # the OCTET STRING
    Tlv certs               # [0] certificates, tag 0 when absent
    Tlv sid
    Tlv digest_alg
    Tlv signed_attrs
    Tlv sig_alg
    Tlv signature
    Tlv attr_ct
    Tlv attr_md
    int digest_hash


cdef inline bint explicit_one(const Tlv *wrapper, Tlv *inner) noexcept nogil:
    """[n] EXPLICIT: exactly one element inside."""
    cdef Cursor c
    cur_init(&c, wrapper)
    return cur_next(&c, inner) == 1 and c.n == 0


cdef inline bint explicit_first(const Tlv *wrapper, Tlv *inner) noexcept nogil:
    """[n] EXPLICIT as the reference's CMS parser reads it: the first element inside,
    whatever follows it."""
    return der_read(wrapper.val, wrapper.vlen, inner) == 0


# Field rules for seq_fields: a required field takes the next element whatever its tag;
# an optional one takes it only when class and tag number match (the constructed bit is
# not compared); an optional ANY takes any element.
cdef enum:
    F_REQ = -1
    F_ANY = -2


cdef int seq_fields(const Tlv *seq, const int *spec, int nspec, Tlv *out) noexcept nogil:
    """Assign a SEQUENCE's elements to its fields the way the reference's CMS parser does
    (tags are checked later, only for the fields it reads). Absent fields get tag 0."""
    cdef Cursor c
    cdef Tlv t
    cdef int f = 0, k, i
    for i in range(nspec):
        out[i].tag = 0
        out[i].tlen = 0
    cur_init(&c, seq)
    while True:
        k = cur_next(&c, &t)
        if k == 0:
            break
        if k < 0:
            return -1
        while f < nspec and spec[f] >= 0 and (t.tag & 0xdf) != spec[f]:
            f += 1
        if f >= nspec:
            continue        # elements after the last field are kept, unread
        out[f] = t
        f += 1
    while f < nspec:
        if spec[f] == F_REQ:
            return -1
        f += 1
    return 0


cdef inline bint ber_oid_ok(const Tlv *t) noexcept nogil:
    """An OBJECT IDENTIFIER the reference's CMS parser can read: any, even empty (it
    drops an unterminated last arc rather than failing)."""
    return t.tag == 0x06


cdef bint structured_content_type(const Tlv *oid) noexcept nogil:
    """Content types the reference parses as structures (signedData, envelopedData, ...,
    authEnvelopedData): an OCTET STRING there is malformed to it."""
    if oid.vlen == 9 and memcmp(oid.val, PF_OID_DATA, 8) == 0:
        return 2 <= oid.val[8] <= 6
    if oid.vlen == 11 and memcmp(oid.val, PF_OID_VOUCHER, 10) == 0:
        return oid.val[10] == 2 or oid.val[10] == 9 or oid.val[10] == 23
    return False


cdef int cms_parse(const uint8_t *der, size_t n, Cms *m) noexcept nogil:
    """The SignedData fields the reference reads, with the reference's structural checks."""
    cdef Tlv ci, sd, sis, si, a, v, x
    cdef Tlv f[7]
    cdef Tlv g[2]
    cdef Cursor cs, ca, cv
    cdef int k, nvals
    cdef bint seen_ct = False, seen_md = False, generic
    cdef AlgId alg
    cdef int spec_ci[2]
    cdef int spec_sd[6]
    cdef int spec_encap[2]
    cdef int spec_si[7]
    cdef int spec_alg[2]
    cdef int spec_pair[2]
    spec_ci[0] = F_REQ
    spec_ci[1] = 0x80
    spec_sd[0] = F_REQ
    spec_sd[1] = F_REQ
    spec_sd[2] = F_REQ
    spec_sd[3] = 0x80
    spec_sd[4] = 0x81
    spec_sd[5] = F_REQ
    spec_encap[0] = F_REQ
    spec_encap[1] = 0x80
    spec_si[0] = F_REQ
    spec_si[1] = F_REQ
    spec_si[2] = F_REQ
    spec_si[3] = 0x80
    spec_si[4] = F_REQ
    spec_si[5] = F_REQ
    spec_si[6] = 0x81
    spec_alg[0] = F_REQ
    spec_alg[1] = F_ANY
    spec_pair[0] = F_REQ
    spec_pair[1] = F_REQ

    # ContentInfo { contentType, [0] EXPLICIT content }, nothing after it.
    if der_read(der, n, &ci) < 0 or ci.tag != 0x30 or ci.tlen != n:
        return -1
    if seq_fields(&ci, spec_ci, 2, f) < 0 or not ber_oid_ok(&f[0]) or \
            not oid_is(&f[0], PF_OID_SIGNED_DATA, 9):
        return -1
    if f[1].tag != 0xa0 or not explicit_first(&f[1], &sd) or sd.tag != 0x30:
        return -1

    # SignedData { version, digestAlgorithms, encapContentInfo, [0] certificates,
    #              [1] crls, signerInfos }: version, digestAlgorithms and crls are not read.
    if seq_fields(&sd, spec_sd, 6, f) < 0:
        return -1
    if f[0].tag != 0x02 or f[2].tag != 0x30 or f[5].tag != 0x31:
        return -1
    m.certs = f[3]
    if m.certs.tag != 0 and m.certs.tag != 0xa0:
        return -1
    sis = f[5]
    if seq_fields(&f[2], spec_encap, 2, g) < 0 or not ber_oid_ok(&g[0]):
        return -1
    m.econtent_type = g[0]
    if g[1].tag != 0xa0 or not explicit_first(&g[1], &m.econtent) or m.econtent.tag != 0x04:
        return -1                                       # detached or unreadable content
    if structured_content_type(&m.econtent_type):
        return -1

    # Exactly one SignerInfo.
    cur_init(&cs, &sis)
    if cur_next(&cs, &si) != 1 or si.tag != 0x30:
        return -1
    k = cur_next(&cs, &x)
    if k != 0:
        return -1
    # SignerInfo { version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm,
    #              signature, [1] unsignedAttrs }: version and unsignedAttrs are not read.
    if seq_fields(&si, spec_si, 7, f) < 0:
        return -1
    m.sid = f[1]
    if m.sid.tag == 0x30:
        if seq_fields(&m.sid, spec_pair, 2, g) < 0 or g[0].tag != 0x30 or g[1].tag != 0x02:
            return -1
    elif m.sid.tag != 0x80:
        return -1
    m.digest_alg = f[2]
    if m.digest_alg.tag != 0x30 or seq_fields(&m.digest_alg, spec_alg, 2, g) < 0 or \
            not ber_oid_ok(&g[0]):
        return -1
    alg.oid = g[0]
    m.digest_hash = nist_hash(&alg.oid)
    if m.digest_hash != H_SHA256 and m.digest_hash != H_SHA384 and m.digest_hash != H_SHA512:
        return -1
    m.signed_attrs = f[3]
    if m.signed_attrs.tag != 0xa0 or m.signed_attrs.vlen == 0:
        return -1
    m.sig_alg = f[4]
    if m.sig_alg.tag != 0x30 or seq_fields(&m.sig_alg, spec_alg, 2, g) < 0 or \
            not ber_oid_ok(&g[0]):
        return -1
    m.signature = f[5]      # its type is checked where the reference reads it (cms_item)

    # Signed attributes, all decoded: each type once, one contentType and one
    # messageDigest value, signingTime a valid time.
    cur_init(&ca, &m.signed_attrs)
    while True:
        k = cur_next(&ca, &a)
        if k == 0:
            break
        if k < 0 or a.tag != 0x30:
            return -1
        if seq_fields(&a, spec_pair, 2, g) < 0 or not ber_oid_ok(&g[0]) or g[1].tag != 0x31:
            return -1
        if not attr_unique(&m.signed_attrs, &a, &g[0]):
            return -1
        # Elements after the values: the reference reads them untyped.
        cur_init(&cv, &a)
        cur_next(&cv, &v)
        cur_next(&cv, &v)
        while cv.n:
            if cur_next(&cv, &v) != 1 or not generic_native_ok(&v, MAX_NESTING):
                return -1
        generic = not attr_type_has_spec(&g[0])
        cur_init(&cv, &g[1])
        nvals = 0
        while True:
            k = cur_next(&cv, &v)
            if k == 0:
                break
            if k < 0:
                return -1
            nvals += 1
            if generic:
                if not generic_native_ok(&v, MAX_NESTING):
                    return -1
            elif oid_is(&g[0], PF_OID_ATTR_CT, 9):
                if not ber_oid_ok(&v):
                    return -1
                m.attr_ct = v
            elif oid_is(&g[0], PF_OID_ATTR_MD, 9):
                if v.tag != 0x04:
                    return -1
                m.attr_md = v
            elif oid_is(&g[0], PF_OID_ATTR_ST, 9):
                if not attr_time_valid(&v):
                    return -1
        if oid_is(&g[0], PF_OID_ATTR_CT, 9):
            if nvals != 1:
                return -1
            seen_ct = True
        elif oid_is(&g[0], PF_OID_ATTR_MD, 9):
            if nvals != 1:
                return -1
            seen_md = True
    if not seen_ct or not seen_md:
        return -1
    return 0


cdef bint attr_type_has_spec(const Tlv *oid) noexcept nogil:
    """Attribute types the reference's CMS parser has a value type for. Values of any
    other type it reads untyped (generic_native_ok). Of these, the fastpath checks the
    values of contentType, messageDigest and signingTime; the others (countersignature,
    S/MIME capabilities, time-stamp tokens, ...) it does not read."""
    cdef uint8_t last
    if oid_has_prefix(oid, PF_OID_PKCS9, 8):
        last = oid.val[8]
        return 3 <= last <= 6 or last == 0x0f or last == 0x34
    if oid_has_prefix(oid, PF_OID_SMIME_AA, 10):
        return oid.val[10] == 0x0b or oid.val[10] == 0x0e
    return oid_is(oid, PF_OID_MS_NESTED_SIG, 10) or oid_is(oid, PF_OID_MS_TIMESTAMP, 10)


cdef bint generic_native_ok(const Tlv *t, int depth) noexcept nogil:
    """Whether the reference's CMS parser can turn an element it has no type for into a
    Python value: it picks the universal type by tag number whatever the class, and
    decodes strings strictly, times by their text, SEQUENCEs element by element; an
    ENUMERATED (no names), an ObjectDescriptor, INSTANCE OF or REAL (no Python value),
    a non-empty SET (no fields) or a tag number it does not know fails."""
    cdef int number = t.tag & 0x1f
    cdef Tlv x
    cdef Cursor c
    cdef size_t i
    if depth <= 0:
        return False
    if number == 3:                                         # BIT STRING
        return t.vlen >= 1 and (t.val[0] == 0 or (t.vlen > 1 and t.val[0] <= 7))
    if number == 0 or (7 <= number <= 10) or number == 14 or number == 15:
        return False    # no such type, or one it has no Python value for
    if number == 12:
        return utf8_valid(t.val, t.vlen)
    if number == 20:                                        # TeletexString
        for i in range(t.vlen):
            if PF_TELETEX_UNDEFINED[t.val[i]]:
                return False
        return True
    if number == 22:                                        # IA5String: ASCII
        for i in range(t.vlen):
            if t.val[i] >= 0x80:
                return False
        return True
    if number == 23 or number == 24:
        x = t[0]
        x.tag = 0x17 if number == 23 else 0x18
        return attr_time_valid(&x)
    if number == 28:
        return utf32be_valid(t.val, t.vlen)
    if number == 30:
        return utf16be_valid(t.val, t.vlen)
    if number == 17:
        return t.vlen == 0
    if number == 16 or number == 11:                        # SEQUENCE, EMBEDDED PDV
        cur_init(&c, t)
        while c.n:
            if cur_next(&c, &x) != 1 or not generic_native_ok(&x, depth - 1):
                return False
        return True
    return True     # BOOLEAN, INTEGER, OCTET STRING, NULL, OIDs, and latin-1 strings


cdef bint attr_unique(const Tlv *attrs, const Tlv *this_attr, const Tlv *oid) noexcept nogil:
    """No attribute before this one has the same type."""
    cdef Cursor c
    cdef Tlv a, o
    cur_init(&c, attrs)
    while cur_next(&c, &a) == 1 and a.hdr != this_attr.hdr:
        if der_read(a.val, a.vlen, &o) == 0 and o.vlen == oid.vlen and \
                memcmp(o.val, oid.val, oid.vlen) == 0:
            return False
    return True


cdef bint serial_matches(const Tlv *want, Cert *c) noexcept nogil:
    """Same integer value: the signer identifier may pad where the certificate cannot."""
    cdef const uint8_t *p = want.val
    cdef size_t n = want.vlen
    if n == 0:
        return c.serial.vlen == 1 and c.serial.val[0] == 0
    while n > 1 and ((p[0] == 0 and p[1] < 0x80) or (p[0] == 0xff and p[1] >= 0x80)):
        p += 1
        n -= 1
    return n == c.serial.vlen and memcmp(p, c.serial.val, n) == 0


cdef int find_signer(EngineC *e, const Cms *m, Cert **embedded, size_t n_embedded,
                     Cert **out) noexcept nogil:
    """hsm.cms._find_signer over embedded then extra certificates: 0, or -1 (MALFORMED)."""
    cdef Tlv g[2]
    cdef Tlv issuer, serial
    cdef size_t i
    cdef Cert *c
    cdef int spec_pair[2]
    spec_pair[0] = F_REQ
    spec_pair[1] = F_REQ
    if m.sid.tag == 0x30:
        seq_fields(&m.sid, spec_pair, 2, g)     # checked by cms_parse
        issuer = g[0]
        serial = g[1]
        for i in range(n_embedded + e.n_extras):
            c = embedded[i] if i < n_embedded else e.extras[i - n_embedded]
            if not serial_matches(&serial, c):
                continue
            if not c.issuer_decodable:
                return -1
            if c.issuer.tlen == issuer.tlen and memcmp(c.issuer.hdr, issuer.hdr, issuer.tlen) == 0:
                out[0] = c
                return 0
        return -1
    for i in range(n_embedded + e.n_extras):
        c = embedded[i] if i < n_embedded else e.extras[i - n_embedded]
        if not c.ext_ok:
            return -1
        if c.has_ski and c.ski_len == m.sid.vlen and memcmp(c.ski, m.sid.val, c.ski_len) == 0:
            out[0] = c
            return 0
    return -1


cdef int cms_signature_scheme(const Cms *m, int *scheme, int *hash_id) noexcept nogil:
    """hsm.cms._signature_params: 0, or -1 (MALFORMED)."""
    cdef AlgId a
    cdef int mgf
    cdef uint64_t salt
    cdef uint8_t last
    cdef Tlv g[2]
    cdef int spec_alg[2]
    spec_alg[0] = F_REQ
    spec_alg[1] = F_ANY
    seq_fields(&m.sig_alg, spec_alg, 2, g)      # checked by cms_parse
    a.oid = g[0]
    a.has_params = g[1].tag != 0
    a.params = g[1]
    hash_id[0] = H_NONE
    if a.oid.vlen == 6 and memcmp(a.oid.val, PF_OID_ECDSA, 6) == 0:
        scheme[0] = S_ECDSA
        hash_id[0] = m.digest_hash
    elif oid_is(&a.oid, PF_OID_EC_PUBKEY, 7):
        # id-ecPublicKey, as deployed pledges write it: ECDSA with the digestAlgorithm's hash
        scheme[0] = S_ECDSA
        hash_id[0] = m.digest_hash
    elif a.oid.vlen == 7 and memcmp(a.oid.val, PF_OID_ECDSA, 6) == 0 and a.oid.val[6] == 0x01:
        return -1                                       # ecdsa-with-SHA1
    elif a.oid.vlen == 8 and memcmp(a.oid.val, PF_OID_ECDSA, 6) == 0 and a.oid.val[6] == 0x03 \
            and 2 <= a.oid.val[7] <= 4:
        scheme[0] = S_ECDSA
        hash_id[0] = sha2_by_index(a.oid.val[7] - 1)
    elif oid_has_prefix(&a.oid, PF_OID_PKCS1, 8):
        last = a.oid.val[8]
        if last == 1:
            scheme[0] = S_RSA_PKCS1
            hash_id[0] = m.digest_hash
        elif 11 <= last <= 13:
            scheme[0] = S_RSA_PKCS1
            hash_id[0] = sha2_by_index(last - 10)
        elif last == 10:
            if not a.has_params or a.params.tag != 0x30 or \
                    pss_cms_params(&a.params, hash_id, &mgf) < 0:
                return -1
            if mgf != hash_id[0]:
                return -1
            scheme[0] = S_RSA_PSS
        else:
            return -1
    elif is_ed25519(&a.oid):
        scheme[0] = S_ED25519
        hash_id[0] = m.digest_hash
    else:
        return -1
    if hash_id[0] != H_SHA256 and hash_id[0] != H_SHA384 and hash_id[0] != H_SHA512:
        return -1
    return 0


cdef int pss_cms_params(const Tlv *p, int *hash_id, int *mgf) noexcept nogil:
    """RSASSA-PSS-params as the reference reads them in CMS: hash and MGF1 hash only."""
    cdef Cursor c, w, mm
    cdef Tlv x, inner, moid, mparams
    cdef AlgId a
    hash_id[0] = H_SHA1
    mgf[0] = H_SHA1
    cur_init(&c, p)
    if cur_take(&c, &x, 0xa0):
        if not explicit_one(&x, &inner) or algid_read(&inner, &a, False) < 0:
            return -1
        hash_id[0] = nist_hash(&a.oid)
    if cur_take(&c, &x, 0xa1):
        if not explicit_one(&x, &inner) or inner.tag != 0x30:
            return -1
        cur_init(&mm, &inner)
        if cur_expect(&mm, &moid, 0x06) < 0 or not oid_has_prefix(&moid, PF_OID_PKCS1, 8) or \
                moid.val[8] != 8:
            return -1
        if cur_next(&mm, &mparams) != 1 or algid_read(&mparams, &a, False) < 0:
            return -1
        mgf[0] = nist_hash(&a.oid)
    return 0


cdef bint v1_attr_cert_readable(const Tlv *choice) noexcept nogil:
    """The reference's CMS parser peeks into a [1] (v1 attribute certificate) choice to
    tell a mislabelled v2 one: its first element must be a SEQUENCE starting with an
    INTEGER (the version) or the item does not parse. The other choices it skips."""
    cdef Tlv info, version
    return der_read(choice.val, choice.vlen, &info) == 0 and info.tag == 0x30 and \
        der_read(info.val, info.vlen, &version) == 0 and version.tag == 0x02


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
    if find_signer(e, &m, w.embedded, ne, &signer) < 0:
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

    if not (oid_is(&m.econtent_type, PF_OID_DATA, 9) or oid_is(&m.econtent_type, PF_OID_VOUCHER, 11)):
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

RESULT_NAMES = ("OK", "MALFORMED", "UNEXPECTED_CONTENT_TYPE", "DIGEST_MISMATCH",
                "BAD_SIGNATURE", "UNTRUSTED_SIGNER", "EXPIRED")


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
    """The text of a serialNumber attribute from its DER string type."""
    cdef const char *p = <const char *>o.serial
    if o.serial_tag == 0x1e:
        return p[:o.serial_len].decode("utf-16-be", "replace")
    if o.serial_tag == 0x1c:
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
        cdef const char *names[H_COUNT]
        from pledgeforge.fastpath.results import Result
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.codes = tuple(Result)
        if [int(r) for r in self.codes] != list(range(len(RESULT_NAMES))):
            raise RuntimeError("pledgeforge.fastpath.Result does not match the extension's codes")
        self.e = <EngineC *>calloc(1, sizeof(EngineC))
        if self.e == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.e.lock, NULL)
        pthread_cond_init(&self.e.ready, NULL)
        names[0] = NULL
        names[H_SHA1] = b"SHA1"
        names[H_SHA224] = b"SHA224"
        names[H_SHA256] = b"SHA256"
        names[H_SHA384] = b"SHA384"
        names[H_SHA512] = b"SHA512"
        names[H_SHA3_224] = b"SHA3-224"
        names[H_SHA3_256] = b"SHA3-256"
        names[H_SHA3_384] = b"SHA3-384"
        names[H_SHA3_512] = b"SHA3-512"
        for i in range(1, H_COUNT):
            self.e.mds[i] = EVP_MD_fetch(NULL, names[i], NULL)
            if self.e.mds[i] == NULL:
                raise RuntimeError("libcrypto lacks a SHA-1/SHA-2/SHA-3 digest")
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
