"""Bulk verification of vouchers, voucher-requests and certificates over OpenSSL libcrypto.

`verify_bulk` / `BulkVerifier` run the Cython extension (_verify); `reference`
holds the pure-Python verifier the extension agrees with item by item.
"""

from .bulk import BulkVerifier, default_threads, verify_bulk
from .results import ItemResult, Result
from .sources import BulkInputError, Item, items_from, read_der_stream

__all__ = ["BulkVerifier", "BulkInputError", "Item", "ItemResult", "Result", "default_threads",
           "items_from", "read_der_stream", "verify_bulk"]
