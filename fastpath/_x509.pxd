# X.509 certificates as the reference's parser (cryptography) reads them: algorithm
# identifiers, names, extensions, the public key. The engine caches one Cert per
# distinct certificate of a batch.

from libc.stdint cimport int64_t, uint8_t, uint64_t

from ._der cimport Tlv
from ._libcrypto cimport EVP_PKEY


# Public key kinds.
cdef enum:
    K_BAD = 0           # libcrypto could not load the key
    K_EC = 1
    K_RSA = 2
    K_ED25519 = 3
    K_ED448 = 4
    K_DSA = 5
    K_OTHER = 6         # loads, but signs nothing the reference verifies (X25519, DH, ...)
    K_UNSUPPORTED = 7   # a key type or curve the reference refuses to load at all

# Where a cache entry is.
cdef enum:
    CS_PARSING = 0
    CS_READY = 1

cdef enum:
    PAIR_SLOTS = 4      # cached "signed by" results per certificate


cdef struct AlgId:
    Tlv oid
    Tlv params
    bint has_params


cdef struct PairSlot:
    uint64_t parent_id
    int state           # 0 empty, 1 in progress, 2 done
    int result          # 1 signed by the parent, 0 not, -1 the reference cannot check it


cdef struct Cert:
    # the engine's cache entry
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
    # the engine's "signed by" results for this certificate as a child
    PairSlot pairs[PAIR_SLOTS]
    unsigned int pair_next


cdef int hash_by_oid(const Tlv *oid) noexcept nogil
cdef int algid_read(const Tlv *t, AlgId *a, bint strict) noexcept nogil
cdef int cert_parse(Cert *c) noexcept nogil
cdef void cert_read_extensions(Cert *c) noexcept nogil
cdef void cert_load_key(Cert *c) noexcept nogil
cdef bint key_fits(int scheme, int key_kind) noexcept nogil
