"""BRSKI (RFC 8995) and EST (RFC 7030) endpoints and media types, for the pledge and the servers alike."""

BRSKI_PATH = "/.well-known/brski"
EST_PATH = "/.well-known/est"

REQUEST_VOUCHER = f"{BRSKI_PATH}/requestvoucher"
VOUCHER_STATUS = f"{BRSKI_PATH}/voucher_status"
ENROLL_STATUS = f"{BRSKI_PATH}/enrollstatus"
REQUEST_AUDIT_LOG = f"{BRSKI_PATH}/requestauditlog"

#: pledgeforge's own: every server of a lab answers it with its role
HEALTH_PATH = "/.well-known/pledgeforge/health"

VOUCHER_MEDIA_TYPE = "application/voucher-cms+json"
JSON_MEDIA_TYPE = "application/json"
PKCS10_MEDIA_TYPE = "application/pkcs10"
PKCS7_MEDIA_TYPE = "application/pkcs7-mime"
CERTS_ONLY_MEDIA_TYPE = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS_MEDIA_TYPE = "application/csrattrs"
