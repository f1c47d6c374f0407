# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CMS SignedData as the reference reads it (hsm.cms over asn1crypto): the fields it
reads, the structural checks it makes on the way, the signer it finds and the
signature algorithm it accepts. Content types, digests, signature algorithms and
signed attributes come from the verification profile (_profile.pxd)."""

from libc.stdint cimport uint8_t
from libc.string cimport memcmp

from ._der cimport (Cursor, Tlv, attr_time_valid, cur_expect, cur_init, cur_next, cur_take,
                    der_read, oid_find, oid_has_prefix, oid_is, utf8_valid, utf16be_valid,
                    utf32be_valid)
from ._profile cimport (H_FROM_DIGEST, H_FROM_PSS_PARAMS, H_NONE, H_SHA1, MAX_NESTING,
                        N_CMS_SIGNATURE_ALGORITHMS, N_CONTENT_TYPES, OidEntry,
                        PF_CMS_DIGEST_ALLOWED, PF_CONTENT_TYPES,
                        PF_CMS_SIGNATURE_ALGORITHMS, PF_OID_ATTR_CONTENT_TYPE,
                        PF_OID_ATTR_MESSAGE_DIGEST, PF_OID_ATTR_SIGNING_TIME, PF_OID_SIGNED_DATA)
from ._x509 cimport AlgId, Cert, algid_read, hash_by_oid


cdef extern from *:
    """
    /* DER contents of object identifiers (and arcs) asn1crypto's CMS types name. */
    static const unsigned char PF_OID_PKCS7[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x07};              /* + n */
    static const unsigned char PF_OID_SMIME_CT[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x10,0x01}; /* + n */
    static const unsigned char PF_OID_PKCS9[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09};          /* + n */
    static const unsigned char PF_OID_SMIME_AA[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x09,0x10,0x02}; /* + n */
    static const unsigned char PF_OID_MS_NESTED_SIG[] = {0x2b,0x06,0x01,0x04,0x01,0x82,0x37,0x02,0x04,0x01};
    static const unsigned char PF_OID_MS_TIMESTAMP[] = {0x2b,0x06,0x01,0x04,0x01,0x82,0x37,0x03,0x03,0x01};
    static const unsigned char PF_OID_MGF1[] = {0x2a,0x86,0x48,0x86,0xf7,0x0d,0x01,0x01,0x08};
    /* Teletex (T.61) octets asn1crypto's codec maps to nothing. */
    static const unsigned char PF_TELETEX_UNDEFINED[256] = {
        [35]=1, [36]=1, [92]=1, [94]=1, [96]=1, [123]=1, [125]=1, [126]=1, [169]=1, [170]=1,
        [172]=1, [173]=1, [174]=1, [175]=1, [185]=1, [186]=1, [192]=1, [201]=1,
        [208]=1, [209]=1, [210]=1, [211]=1, [212]=1, [213]=1, [214]=1, [215]=1, [216]=1,
        [217]=1, [218]=1, [219]=1, [220]=1, [221]=1, [222]=1, [223]=1, [229]=1, [255]=1};
    """
    const uint8_t PF_OID_PKCS7[8]
    const uint8_t PF_OID_SMIME_CT[10]
    const uint8_t PF_OID_PKCS9[8]
    const uint8_t PF_OID_SMIME_AA[10]
    const uint8_t PF_OID_MS_NESTED_SIG[10]
    const uint8_t PF_OID_MS_TIMESTAMP[10]
    const uint8_t PF_OID_MGF1[9]
    const uint8_t PF_TELETEX_UNDEFINED[256]


# --------------------------------------------------------------------------- fields

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
    if oid_has_prefix(oid, PF_OID_PKCS7, sizeof(PF_OID_PKCS7)):
        return 2 <= oid.val[8] <= 6
    if oid_has_prefix(oid, PF_OID_SMIME_CT, sizeof(PF_OID_SMIME_CT)):
        return oid.val[10] == 2 or oid.val[10] == 9 or oid.val[10] == 23
    return False


# --------------------------------------------------------------------------- SignedData

cdef bint untyped_content(const Tlv *version, const Tlv *content_type) noexcept nogil:
    """Whether the reference reads the content as ANY: a version-1 SignedData's
    encapContentInfo is PKCS #7's ContentInfo to its CMS parser, whose content has no
    type for a content type it does not know (any but id-data, the voucher's and the
    structured ones). Such an item fails later, on its content type."""
    cdef size_t i = 0
    while i + 1 < version.vlen and version.val[i] == 0:
        i += 1                                          # INTEGER 1, however padded
    if version.vlen == 0 or i + 1 != version.vlen or version.val[i] != 1:
        return False
    return not structured_content_type(content_type) and \
        oid_find(content_type, PF_CONTENT_TYPES, N_CONTENT_TYPES) < 0


cdef inline bint reads_as_octets(const Tlv *t) noexcept nogil:
    """An untyped element whose value the reference reads as bytes: primitive, of tag
    number 4 (OCTET STRING) or 21 (VideotexString) in any class, as its CMS parser picks
    the universal type by tag number."""
    return not (t.tag & 0x20) and ((t.tag & 0x1f) == 4 or (t.tag & 0x1f) == 21)


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
    spec_ci[:] = [F_REQ, 0x80]
    spec_sd[:] = [F_REQ, F_REQ, F_REQ, 0x80, 0x81, F_REQ]
    spec_encap[:] = [F_REQ, 0x80]
    spec_si[:] = [F_REQ, F_REQ, F_REQ, 0x80, F_REQ, F_REQ, 0x81]
    spec_alg[:] = [F_REQ, F_ANY]
    spec_pair[:] = [F_REQ, F_REQ]

    # ContentInfo { contentType, [0] EXPLICIT content }, nothing after it.
    if der_read(der, n, &ci) < 0 or ci.tag != 0x30 or ci.tlen != n:
        return -1
    if seq_fields(&ci, spec_ci, 2, f) < 0 or not ber_oid_ok(&f[0]) or \
            not oid_is(&f[0], PF_OID_SIGNED_DATA, sizeof(PF_OID_SIGNED_DATA)):
        return -1
    if f[1].tag != 0xa0 or not explicit_first(&f[1], &sd) or sd.tag != 0x30:
        return -1

    # SignedData { version, digestAlgorithms, encapContentInfo, [0] certificates,
    #              [1] crls, signerInfos }: digestAlgorithms and crls are not read; the
    # version only chooses how encapContentInfo is read.
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
    if g[1].tag != 0xa0 or not explicit_first(&g[1], &m.econtent):
        return -1                                       # detached or unreadable content
    if m.econtent.tag != 0x04 and not (untyped_content(&f[0], &m.econtent_type) and
                                       reads_as_octets(&m.econtent)):
        return -1
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
    m.digest_hash = hash_by_oid(&alg.oid)
    if not PF_CMS_DIGEST_ALLOWED[m.digest_hash]:
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
            elif oid_is(&g[0], PF_OID_ATTR_CONTENT_TYPE, sizeof(PF_OID_ATTR_CONTENT_TYPE)):
                if not ber_oid_ok(&v):
                    return -1
                m.attr_ct = v
            elif oid_is(&g[0], PF_OID_ATTR_MESSAGE_DIGEST, sizeof(PF_OID_ATTR_MESSAGE_DIGEST)):
                if v.tag != 0x04:
                    return -1
                m.attr_md = v
            elif oid_is(&g[0], PF_OID_ATTR_SIGNING_TIME, sizeof(PF_OID_ATTR_SIGNING_TIME)):
                if not attr_time_valid(&v):
                    return -1
        if oid_is(&g[0], PF_OID_ATTR_CONTENT_TYPE, sizeof(PF_OID_ATTR_CONTENT_TYPE)):
            if nvals != 1:
                return -1
            seen_ct = True
        elif oid_is(&g[0], PF_OID_ATTR_MESSAGE_DIGEST, sizeof(PF_OID_ATTR_MESSAGE_DIGEST)):
            if nvals != 1:
                return -1
            seen_md = True
    if not seen_ct or not seen_md:
        return -1
    return 0


# --------------------------------------------------------------------------- attribute values

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


# --------------------------------------------------------------------------- the signer

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


cdef int find_signer(const Cms *m, Cert **embedded, size_t n_embedded, Cert **extras,
                     size_t n_extras, Cert **out) noexcept nogil:
    """hsm.cms._find_signer over embedded then extra certificates: 0, or -1 (MALFORMED)."""
    cdef Tlv g[2]
    cdef Tlv issuer, serial
    cdef size_t i
    cdef Cert *c
    cdef int spec_pair[2]
    spec_pair[:] = [F_REQ, F_REQ]
    if m.sid.tag == 0x30:
        seq_fields(&m.sid, spec_pair, 2, g)     # checked by cms_parse
        issuer = g[0]
        serial = g[1]
        for i in range(n_embedded + n_extras):
            c = embedded[i] if i < n_embedded else extras[i - n_embedded]
            if not serial_matches(&serial, c):
                continue
            if not c.issuer_decodable:
                return -1
            if c.issuer.tlen == issuer.tlen and memcmp(c.issuer.hdr, issuer.hdr, issuer.tlen) == 0:
                out[0] = c
                return 0
        return -1
    for i in range(n_embedded + n_extras):
        c = embedded[i] if i < n_embedded else extras[i - n_embedded]
        if not c.ext_ok:
            return -1
        if c.has_ski and c.ski_len == m.sid.vlen and memcmp(c.ski, m.sid.val, c.ski_len) == 0:
            out[0] = c
            return 0
    return -1


cdef int cms_signature_scheme(const Cms *m, int *scheme, int *hash_id) noexcept nogil:
    """hsm.cms._signature_params: the profile's CMS_SIGNATURE_ALGORITHMS, with a hash
    of CMS_DIGESTS; 0, or -1 (MALFORMED)."""
    cdef AlgId a
    cdef int i, mgf
    cdef const OidEntry *alg
    cdef Tlv g[2]
    cdef int spec_alg[2]
    spec_alg[:] = [F_REQ, F_ANY]
    seq_fields(&m.sig_alg, spec_alg, 2, g)      # checked by cms_parse
    a.oid = g[0]
    a.has_params = g[1].tag != 0
    a.params = g[1]
    hash_id[0] = H_NONE
    i = oid_find(&a.oid, PF_CMS_SIGNATURE_ALGORITHMS, N_CMS_SIGNATURE_ALGORITHMS)
    if i < 0:
        return -1
    alg = &PF_CMS_SIGNATURE_ALGORITHMS[i]
    scheme[0] = alg.kind
    if alg.hash == H_FROM_DIGEST:
        hash_id[0] = m.digest_hash
    elif alg.hash == H_FROM_PSS_PARAMS:
        if not a.has_params or a.params.tag != 0x30 or pss_cms_params(&a.params, hash_id, &mgf) < 0:
            return -1
        if mgf != hash_id[0]:
            return -1
    else:
        hash_id[0] = alg.hash
    return 0 if PF_CMS_DIGEST_ALLOWED[hash_id[0]] else -1


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
        hash_id[0] = hash_by_oid(&a.oid)
    if cur_take(&c, &x, 0xa1):
        if not explicit_one(&x, &inner) or inner.tag != 0x30:
            return -1
        cur_init(&mm, &inner)
        if cur_expect(&mm, &moid, 0x06) < 0 or not oid_is(&moid, PF_OID_MGF1, sizeof(PF_OID_MGF1)):
            return -1
        if cur_next(&mm, &mparams) != 1 or algid_read(&mparams, &a, False) < 0:
            return -1
        mgf[0] = hash_by_oid(&a.oid)
    return 0


cdef bint v1_attr_cert_readable(const Tlv *choice) noexcept nogil:
    """The reference's CMS parser peeks into a [1] (v1 attribute certificate) choice to
    tell a mislabelled v2 one: its first element must be a SEQUENCE starting with an
    INTEGER (the version) or the item does not parse. The other choices it skips."""
    cdef Tlv info, version
    return der_read(choice.val, choice.vlen, &info) == 0 and info.tag == 0x30 and \
        der_read(info.val, info.vlen, &version) == 0 and version.tag == 0x02

