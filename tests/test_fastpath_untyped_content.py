"""eContent of a content type the reference's parser does not know.

A version-1 SignedData's encapContentInfo is PKCS #7's ContentInfo to asn1crypto:
for an unknown content type its content is ANY, read as bytes when its tag number
is that of OCTET STRING or VideotexString in any class, and the item then fails on
its content type rather than as malformed. Version 3 reads it as CMS's OCTET STRING.
"""

from __future__ import annotations

import pytest

from vectors import APPC
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_cms_item
from pledgeforge.hsm.chain import load_certificate_file

# Offsets in vr_00-D0-E5-F2-00-02.der (SignedData version 1): the version's
# value octet, the last octet of eContentType (id-data) and the eContent's tag.
VERSION, CONTENT_TYPE_END, CONTENT_TAG = 25, 47, 60


@pytest.fixture(scope="module")
def pki():
    certs = [load_certificate_file(str(APPC / name))[0]
             for name in ("vendor.crt", "ownerca_secp384r1.crt", "masa.crt")]
    return certs[:2], certs[2:]


@pytest.mark.parametrize("version", [1, 3])
def test_every_content_tag_under_an_unknown_content_type_agrees(pki, version):
    anchors, extra = pki
    vector = (APPC / "vr_00-D0-E5-F2-00-02.der").read_bytes()
    assert vector[VERSION] == 1 and vector[CONTENT_TAG] == 0x04
    items = []
    for tag in range(256):
        item = bytearray(vector)
        item[VERSION] = version
        item[CONTENT_TYPE_END] ^= 0x08            # 1.2.840.113549.1.7.9: no type asn1crypto knows
        item[CONTENT_TAG] = tag
        items.append(bytes(item))
    verifier = BulkVerifier(anchors, extra, threads=1, check_time=False)
    got = [r.code for r in verifier.verify_batch(items)]
    want = [verify_cms_item(item, anchors, extra, check_time=False)[0] for item in items]
    assert got == want
    read_as_bytes = {tag for tag, code in enumerate(got) if code is Result.UNEXPECTED_CONTENT_TYPE}
    assert read_as_bytes == ({0x04, 0x15, 0x44, 0x55, 0x84, 0x95, 0xC4, 0xD5} if version == 1 else {0x04})
