# CMS SignedData as the reference's parser (asn1crypto, through hsm.cms) reads it.

from libc.stdint cimport uint8_t

from ._der cimport Tlv
from ._x509 cimport Cert


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


cdef int cms_parse(const uint8_t *der, size_t n, Cms *m) noexcept nogil
cdef bint v1_attr_cert_readable(const Tlv *choice) noexcept nogil
cdef int find_signer(const Cms *m, Cert **embedded, size_t n_embedded, Cert **extras,
                     size_t n_extras, Cert **out) noexcept nogil
cdef int cms_signature_scheme(const Cms *m, int *scheme, int *hash_id) noexcept nogil
