# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""DER as the fastpath reads it: the framing rule bulk items follow, primitive values,
times and text. Everything here runs without the GIL on bytes read in place."""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp

from ._profile cimport (MAX_NESTING, MAX_OID_LENGTH, PF_PRINTABLE, TEXT_PRINTABLE, TEXT_UTF8,
                        TEXT_UTF16BE, TEXT_UTF32BE, OidEntry)

# --------------------------------------------------------------------------- elements and values

cdef int oid_find(const Tlv *t, const OidEntry *table, int n) noexcept nogil:
    """The index of t's OID in a profile table, -1 when it is not there."""
    cdef int i
    for i in range(n):
        if t.vlen == table[i].len and memcmp(t.val, table[i].der, t.vlen) == 0:
            return i
    return -1


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


cdef bint oid_valid(const Tlv *t) noexcept nogil:
    """Base-128 arcs without padding octets, the last one terminated."""
    cdef size_t i
    if t.tag != 0x06 or t.vlen == 0 or t.vlen > MAX_OID_LENGTH:
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


cdef bint biguint_valid(const Tlv *t) noexcept nogil:
    """A minimal non-negative INTEGER of any size."""
    return int_valid(t) and not (t.val[0] & 0x80)


cdef int der_order(const Tlv *a, const Tlv *b) noexcept nogil:
    """Compare two encodings as the reference orders SET OF elements: <0, 0, >0."""
    cdef size_t n = a.tlen if a.tlen < b.tlen else b.tlen
    cdef int c = memcmp(a.hdr, b.hdr, n)
    if c != 0:
        return c
    return (a.tlen > b.tlen) - (a.tlen < b.tlen)


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


cdef bint text_valid(int check, const uint8_t *s, size_t n) noexcept nogil:
    """Whether s passes a profile text check (TEXT_*): an encoding or the PrintableString
    alphabet. TEXT_NONE passes nothing."""
    cdef size_t i
    if check == TEXT_UTF8:
        return utf8_valid(s, n)
    if check == TEXT_UTF16BE:
        return utf16be_valid(s, n)
    if check == TEXT_UTF32BE:
        return utf32be_valid(s, n)
    if check == TEXT_PRINTABLE:
        for i in range(n):
            if not PF_PRINTABLE[s[i]]:
                return False
        return True
    return False
