# cython: boundscheck=False, wraparound=False
"""Bulk verification over OpenSSL libcrypto (placeholder: the real module lands with its issue)."""

cdef extern from "openssl/crypto.h":
    unsigned long OpenSSL_version_num()


def openssl_version_num():
    """The libcrypto version this extension is linked against."""
    return OpenSSL_version_num()
