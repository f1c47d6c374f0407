# DER, read in place: elements and cursors over them, primitive values, times and
# text. The reader and the cursor are inline here, so every module that walks DER
# compiles them into its own loops; the rest lives in _der.pyx.

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp

from ._profile cimport OidEntry


cdef struct Tlv:
    const uint8_t *hdr      # identifier octet
    const uint8_t *val      # first content octet
    size_t vlen             # content length
    size_t tlen             # header + content
    int tag                 # identifier octet (low tag numbers only)


cdef struct Cursor:
    const uint8_t *p
    size_t n


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


cdef inline bint oid_is(const Tlv *t, const uint8_t *oid, size_t n) noexcept nogil:
    return t.vlen == n and memcmp(t.val, oid, n) == 0


cdef inline bint oid_has_prefix(const Tlv *t, const uint8_t *oid, size_t n) noexcept nogil:
    """OID = prefix + one final arc octet."""
    return t.vlen == n + 1 and memcmp(t.val, oid, n) == 0


cdef int oid_find(const Tlv *t, const OidEntry *table, int n) noexcept nogil
cdef bint der_framed(const uint8_t *p, size_t n) noexcept nogil
cdef bint oid_valid(const Tlv *t) noexcept nogil
cdef bint int_valid(const Tlv *t) noexcept nogil
cdef bint uint_small(const Tlv *t, uint64_t maxval, uint64_t *out) noexcept nogil
cdef bint biguint_valid(const Tlv *t) noexcept nogil
cdef bint bitstring_valid(const Tlv *t) noexcept nogil
cdef bint null_valid(const Tlv *t) noexcept nogil
cdef bint bool_true(const Tlv *t) noexcept nogil
cdef int der_order(const Tlv *a, const Tlv *b) noexcept nogil

# times
cdef int x509_time(const Tlv *t, int64_t *out) noexcept nogil
cdef bint attr_time_valid(const Tlv *t) noexcept nogil

# text
cdef bint utf8_valid(const uint8_t *s, size_t n) noexcept nogil
cdef bint utf16be_valid(const uint8_t *s, size_t n) noexcept nogil
cdef bint utf32be_valid(const uint8_t *s, size_t n) noexcept nogil
cdef bint text_valid(int check, const uint8_t *s, size_t n) noexcept nogil
