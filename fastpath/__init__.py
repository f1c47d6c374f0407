"""Bulk verification of vouchers, voucher-requests and certificates over OpenSSL libcrypto.

`verify_bulk` / `BulkVerifier` run the Cython extension: the engine _verify over
_der (DER), _x509 (certificates) and _cms (SignedData), built with the verification
profile (hsm/verification_profile.py) and the result codes (results.py) compiled in
by profile_codegen. `reference` holds the pure-Python verifier the extension agrees
with item by item.
"""

from .bulk import BulkVerifier, default_threads, verify_bulk
from ._verify import ItemResult
from .results import Result
from .sources import BulkInputError, Item, items_from, read_der_stream

__all__ = ["BulkVerifier", "BulkInputError", "Item", "ItemResult", "Result", "default_threads",
           "items_from", "read_der_stream", "verify_bulk"]
