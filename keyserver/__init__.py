"""The signing service: registrar-side keys behind a key server that builds what it signs.

MASA voucher keys, registrar voucher-request keys and enrollment CA keys
stay in HSMs behind this service; the MASA, the registrars and the EST CA
are its clients (a `signer+https:` key URI, client.py). The service never
signs a digest of unknown meaning unless a delegation grants it: it checks
and builds vouchers, voucher-requests and certificates itself
(operations.py) under delegations from its configuration (policy.py,
config.py), stops replays and floods (admission.py), keeps a hash-chained
audit log (audit.py) and serves over mutual TLS (service.py, server.py).
Short-term delegation certificates let a registrar node keep its own key
(renewal.py).
"""
