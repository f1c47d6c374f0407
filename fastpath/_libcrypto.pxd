# The C interfaces the fastpath uses: OpenSSL 3.0 libcrypto, POSIX threads and two
# atomics. Only what the fastpath calls is declared; every libcrypto function here
# is thread-safe in OpenSSL 3.0 when each thread uses its own contexts.

from libc.stdint cimport uint64_t

cdef extern from "openssl/crypto.h" nogil:
    unsigned long OpenSSL_version_num()

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct EVP_PKEY_CTX:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct ENGINE:
        pass

    int EVP_PKEY_EC
    int EVP_PKEY_RSA
    int EVP_PKEY_RSA_PSS
    int EVP_PKEY_ED25519
    int EVP_PKEY_ED448
    int EVP_PKEY_DSA

    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties)
    void EVP_MD_free(EVP_MD *md)
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_MD_CTX_reset(EVP_MD_CTX *ctx)
    int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)
    int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type,
                             ENGINE *e, EVP_PKEY *pkey)
    int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sigret, size_t siglen,
                         const unsigned char *tbs, size_t tbslen)

    void EVP_PKEY_free(EVP_PKEY *pkey)
    int EVP_PKEY_get_base_id(const EVP_PKEY *pkey)
    int EVP_PKEY_get_group_name(const EVP_PKEY *pkey, char *name, size_t name_sz, size_t *gname_len)

    EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_pkey(OSSL_LIB_CTX *libctx, EVP_PKEY *pkey,
                                             const char *propquery)
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_verify_init(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen,
                        const unsigned char *tbs, size_t tbslen)
    int EVP_PKEY_CTX_set_signature_md(EVP_PKEY_CTX *ctx, const EVP_MD *md)

cdef extern from "openssl/x509.h" nogil:
    EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length)

cdef extern from "openssl/rsa.h" nogil:
    int RSA_PKCS1_PADDING
    int RSA_PKCS1_PSS_PADDING
    int RSA_PSS_SALTLEN_AUTO
    int EVP_PKEY_CTX_set_rsa_padding(EVP_PKEY_CTX *ctx, int pad)
    int EVP_PKEY_CTX_set_rsa_pss_saltlen(EVP_PKEY_CTX *ctx, int len)
    int EVP_PKEY_CTX_set_rsa_mgf1_md(EVP_PKEY_CTX *ctx, const EVP_MD *md)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start_routine)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, const pthread_condattr_t *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_broadcast(pthread_cond_t *cond)

cdef extern from *:
    """
    /* Work distribution: each worker claims the next index range atomically. */
    static inline size_t pf_claim(size_t *counter, size_t step) {
        return __atomic_fetch_add(counter, step, __ATOMIC_RELAXED);
    }
    /* Statistics counters shared by the workers. */
    static inline void pf_count(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    """
    size_t pf_claim(size_t *counter, size_t step) nogil
    void pf_count(uint64_t *p) nogil
