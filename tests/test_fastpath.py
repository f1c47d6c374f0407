"""The libcrypto fastpath agrees with the pure-Python reference item by item."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectors import APPC
from pledgeforge.fastpath import BulkVerifier, Result, read_der_stream, verify_bulk
from pledgeforge.fastpath.sources import MAX_ITEM_BYTES
from pledgeforge.fastpath.reference import verify_certificate_item, verify_cms_item
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, issue_idevid, make_ca

CMS_VECTORS = ["vr_00-D0-E5-F2-00-02.der", "voucher_00-D0-E5-F2-00-02.der",
               "parboiled_vr_00-D0-E5-F2-00-02.der"]


def _cert(name: str) -> x509.Certificate:
    return load_certificate_file(str(APPC / name))[0]


@pytest.fixture(scope="module")
def rfc_pki():
    return {"vendor": _cert("vendor.crt"), "owner": _cert("ownerca_secp384r1.crt"),
            "masa": _cert("masa.crt")}


@pytest.fixture(scope="module")
def vectors():
    return [(APPC / n).read_bytes() for n in CMS_VECTORS]


def _agree(items, anchors, extra=(), *, at_time=None, check_time=True):
    """Fastpath and reference on every item: codes, and content/serial where OK."""
    verifier = BulkVerifier(anchors, extra, threads=2, at_time=at_time, check_time=check_time)
    fast = verifier.verify_batch(list(items))
    for der, got in zip(items, fast):
        want, content = verify_cms_item(der, anchors, extra, at_time=at_time, check_time=check_time)
        assert got.code == want, (got, want)
        if want is Result.OK:
            assert der[got.content_offset:got.content_offset + got.content_length] == content
    return fast


@pytest.mark.parametrize("anchor_names", [("vendor",), ("owner",), ("vendor", "owner")])
@pytest.mark.parametrize("check_time", [False, True])
def test_rfc8995_vectors_agree(rfc_pki, vectors, anchor_names, check_time):
    anchors = [rfc_pki[n] for n in anchor_names]
    results = _agree(vectors, anchors, [rfc_pki["masa"]], check_time=check_time)
    if anchor_names == ("vendor", "owner"):
        expected = Result.OK if not check_time else Result.EXPIRED
        assert [r.code for r in results] == [expected] * 3
        assert results[0].serial == "00-D0-E5-F2-00-02"
        voucher = vectors[1][results[1].content_offset:][:results[1].content_length]
        assert json.loads(voucher)["ietf-voucher:voucher"]["serial-number"] == "00-D0-E5-F2-00-02"


def test_time_inside_validity_is_ok(rfc_pki, vectors):
    at = dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc)
    results = _agree(vectors[:1], [rfc_pki["vendor"]], at_time=at)
    assert results[0].code is Result.OK


# --------------------------------------------------------------------------- generated batches

@pytest.fixture(scope="module")
def owner_ca():
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P384)
    return key, make_ca(key, "CN=test owner CA")


def _issue(ca, public_key, cn):
    key, cert = ca
    return issue_certificate(key, cert, public_key, f"CN={cn}")


@pytest.mark.parametrize("alg,pad,hash_name", [
    (KeyAlgorithm.EC_P256, Padding.PKCS1V15, None),
    (KeyAlgorithm.EC_P384, Padding.PKCS1V15, None),
    (KeyAlgorithm.EC_P256, Padding.PKCS1V15, "sha384"),
    (KeyAlgorithm.RSA_2048, Padding.PKCS1V15, None),
    (KeyAlgorithm.RSA_2048, Padding.PSS, "sha256"),
])
def test_software_keys_and_every_failure_agree(owner_ca, alg, pad, hash_name):
    key = SoftwareSigner.generate(alg)
    cert = _issue(owner_ca, key.public_key, "registrar")
    good = sign_cms(b'{"ietf-voucher-request:voucher":{"nonce":"abc"}}', key, cert,
                    hash_name=hash_name, pad=pad)
    data_ct = sign_cms(b"{}", key, cert, content_type="data", hash_name=hash_name, pad=pad)
    tampered = bytearray(good)
    tampered[tampered.index(b"abc")] ^= 1
    bad_sig = bytearray(good)
    bad_sig[-3] ^= 0x40
    stranger = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    other = sign_cms(b"{}", stranger, make_ca(stranger, "CN=nobody"))
    items = [good, data_ct, bytes(tampered), bytes(bad_sig), other, good[:-1], b"", b"\x30\x00"]
    codes = [r.code for r in _agree(items, [owner_ca[1]])]
    assert codes[:2] == [Result.OK, Result.OK]
    assert codes[2] is Result.DIGEST_MISMATCH
    assert codes[4] is Result.UNTRUSTED_SIGNER
    assert codes[5:] == [Result.MALFORMED] * 3


def test_ed25519_signed_attributes(owner_ca):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    cert = _issue(owner_ca, key.public_key(), "ed25519 registrar")
    # Built with the reference's own pieces: sign_cms takes a Signer, Ed25519 has none.
    from asn1crypto import cms as acms
    import hashlib

    content = b'{"ed": 25519}'
    attrs = acms.CMSAttributes(sorted([
        acms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        acms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha512(content).digest()]}),
    ], key=lambda a: a.dump()))
    from asn1crypto import x509 as ax
    acert = ax.Certificate.load(cert.public_bytes(Encoding.DER))
    si = acms.SignerInfo({
        "version": "v1",
        "sid": acms.SignerIdentifier({"issuer_and_serial_number": acms.IssuerAndSerialNumber(
            {"issuer": acert.issuer, "serial_number": acert.serial_number})}),
        "digest_algorithm": {"algorithm": "sha512"}, "signed_attrs": attrs,
        "signature_algorithm": {"algorithm": "ed25519"}, "signature": key.sign(attrs.dump())})
    sd = acms.SignedData({"version": "v1", "digest_algorithms": [{"algorithm": "sha512"}],
                          "encap_content_info": {"content_type": "data", "content": content},
                          "certificates": [acert], "signer_infos": [si]})
    der = acms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()
    broken = bytearray(der)
    broken[-2] ^= 1
    # One worker checks all of them in turn: each check must start from a clean context.
    assert [r.code for r in _agree([der, bytes(broken), der, der], [owner_ca[1]])] == \
        [Result.OK, Result.BAD_SIGNATURE, Result.OK, Result.OK]


def test_softhsm_signed_voucher_requests(token, owner_ca):
    """Pledges whose IDevID keys live in a real SoftHSM2 token."""
    ca_key, ca = owner_ca
    items = []
    serials = []
    for i in range(3):
        signer = keystore.generate_key(token.uri(f"idevid{i}"), "ec-p256")
        serial = f"PF-SOFTHSM-{i}"
        idevid = issue_idevid(ca_key, ca, signer.public_key, serial)
        items.append(sign_cms(json.dumps({"n": i}).encode(), signer, idevid))
        serials.append(serial)
    results = _agree(items, [ca])
    assert [r.code for r in results] == [Result.OK] * 3
    assert [r.serial for r in results] == serials


def test_swtpm_signed_voucher_requests(tpm_uri):
    """A manufacturer CA key and pledge IDevID keys inside a real swtpm: RSA-2048 for the
    CA (PKCS#1 v1.5 and PSS certificate signatures, a PSS-signed CMS), P-256 and P-384
    for the pledges, every key reopened by URI as a booting pledge does."""
    keystore.generate_key(tpm_uri(0x81020000), "rsa-2048")
    ca_key = keystore.open_signer(tpm_uri(0x81020000))
    ca = make_ca(ca_key, "CN=TPM-held manufacturer CA", pad=Padding.PSS)
    items, serials = [], []
    for i, (alg, pad) in enumerate([("ec-p256", Padding.PKCS1V15), ("ec-p384", Padding.PSS)]):
        keystore.generate_key(tpm_uri(0x81020001 + i), alg)
        signer = keystore.open_signer(tpm_uri(0x81020001 + i))
        serial = f"PF-SWTPM-{i}"
        if pad is Padding.PSS:
            name = x509.Name([x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, serial)])
            idevid = issue_certificate(ca_key, ca, signer.public_key, name, pad=Padding.PSS)
        else:
            idevid = issue_idevid(ca_key, ca, signer.public_key, serial)
        request = sign_cms(json.dumps({"serial-number": serial}).encode(), signer, idevid)
        tampered = bytearray(request)
        tampered[tampered.index(serial.encode())] ^= 0x20
        items += [request, bytes(tampered)]
        serials += [serial, serial]
    items.append(sign_cms(b'{"from": "the CA itself"}', ca_key, ca, pad=Padding.PSS))
    results = _agree(items, [ca])
    assert [r.code for r in results] == [Result.OK, Result.DIGEST_MISMATCH] * 2 + [Result.OK]
    assert [r.serial for r in results] == serials + [None]


def test_threads_default_to_the_cores_this_process_may_use(owner_ca):
    assert BulkVerifier([owner_ca[1]]).threads == len(os.sched_getaffinity(0))
    assert BulkVerifier([owner_ca[1]], threads=3).threads == 3
    with pytest.raises(ValueError):
        BulkVerifier([owner_ca[1]], threads=0)


def test_the_gil_is_released_during_a_batch_and_batches_do_not_overlap(owner_ca):
    """While one thread verifies a batch, another runs Python code: it calls the same
    verifier and is refused (one batch at a time), which it could not do if the
    batch held the GIL."""
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    item = sign_cms(b"{}", key, _issue(owner_ca, key.public_key, "registrar"))
    verifier = BulkVerifier([owner_ca[1]], threads=1)
    calling = threading.Event()                 # the main thread is about to verify a batch
    refused = threading.Event()
    finished = threading.Event()

    def intruder():
        while not finished.is_set() and not refused.is_set():
            if not calling.wait(timeout=0.5):
                continue
            calling.clear()
            try:
                verifier.verify_batch([b"not DER"])
            except RuntimeError:
                refused.set()

    other = threading.Thread(target=intruder)
    other.start()
    try:
        for _ in range(200):                    # bounded; the first batch nearly always does it
            calling.set()
            try:
                results = verifier.verify_batch([item] * 500)
            except RuntimeError:
                continue                        # the intruder got in first
            assert all(r.ok for r in results)
            if refused.is_set():
                break
    finally:
        finished.set()
        other.join()
    assert refused.is_set()


# --------------------------------------------------------------------------- certificates

def test_bare_certificates(owner_ca):
    ca_key, ca = owner_ca
    keys = [SoftwareSigner.generate(KeyAlgorithm.EC_P256) for _ in range(3)]
    certs = [issue_idevid(ca_key, ca, k.public_key, f"SN{i}").public_bytes(
        Encoding.DER) for i, k in enumerate(keys)]
    stranger = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    foreign = make_ca(stranger, "CN=elsewhere").public_bytes(Encoding.DER)
    items = certs + [foreign, certs[0][:-3], b"junk"]
    fast = BulkVerifier([ca], threads=2).verify_batch(items, certificates=True)
    for der, got in zip(items, fast):
        want, serial = verify_certificate_item(der, [ca])
        assert got.code == want
        if want is Result.OK:
            assert got.serial == serial
    assert [r.code for r in fast] == [Result.OK] * 3 + [Result.UNTRUSTED_SIGNER] + [Result.MALFORMED] * 2
    assert [r.serial for r in fast[:3]] == ["SN0", "SN1", "SN2"]


# --------------------------------------------------------------------------- inputs

def test_stream_directory_and_list_give_the_same_results(tmp_path, rfc_pki, vectors):
    stream = tmp_path / "all.der"
    stream.write_bytes(b"".join(vectors * 3))
    folder = tmp_path / "dir"
    folder.mkdir()
    for i, v in enumerate(vectors * 3):
        (folder / f"{i:02d}.der").write_bytes(v)
    anchors = [rfc_pki["vendor"], rfc_pki["owner"]]
    kw = dict(extra_certs=[rfc_pki["masa"]], check_time=False, batch_size=2, threads=1)
    from_list = list(verify_bulk(vectors * 3, anchors, **kw))
    from_stream = list(verify_bulk(stream, anchors, **kw))
    from_dir = list(verify_bulk(folder, anchors, **kw))
    assert [r.code for r in from_list] == [r.code for r in from_stream] == \
        [r.code for r in from_dir] == [Result.OK] * 9
    offsets = [r.item_offset for r in from_stream]
    assert offsets == [sum(len(v) for v in (vectors * 3)[:i]) for i in range(9)]
    assert [r.name for r in from_dir] == [f"{i:02d}.der" for i in range(9)]


def test_stream_with_broken_header_ends_with_one_malformed_item(tmp_path, rfc_pki, vectors):
    path = tmp_path / "s.der"
    path.write_bytes(vectors[0] + b"\x30\x80garbage")
    results = list(verify_bulk(path, [rfc_pki["vendor"]], check_time=False))
    assert [(r.code, r.item_offset) for r in results] == [(Result.OK, 0), (Result.MALFORMED, len(vectors[0]))]


def _damaged(item: bytes, damage: str) -> bytes:
    """One item whose outer length (or header) no longer fits its content."""
    broken = bytearray(item)
    assert broken[:2] == b"\x30\x82"
    if damage == "longer":
        broken[3] += 5                          # swallows the start of the next item
    elif damage == "shorter":
        broken[3] -= 5                          # ends inside its own content
    elif damage == "indefinite":
        broken[1:4] = b"\x80"                   # not DER at all
    elif damage == "two-gib":
        broken[1:4] = b"\x84\x7f\xff\xff\xff"
    return bytes(broken)


@pytest.mark.parametrize("damage", ["longer", "shorter", "indefinite", "two-gib"])
@pytest.mark.parametrize("certificates", [False, True])
def test_a_broken_length_costs_one_item_and_reading_resynchronises(tmp_path, rfc_pki, vectors,
                                                                   damage, certificates):
    """The broken item is MALFORMED at its own offset; every item after it is verified
    as if it were alone (fastpath and reference alike)."""
    if certificates:
        items = [c.public_bytes(Encoding.DER) for c in rfc_pki.values()] * 2
    else:
        items = vectors * 2
    anchors, extra = [rfc_pki["vendor"], rfc_pki["owner"]], [rfc_pki["masa"]]
    kw = dict(extra_certs=extra, check_time=False, certificates=certificates, threads=1)
    alone = [r.code for r in verify_bulk(items, anchors, **kw)]
    assert alone.count(Result.OK) >= 4
    hit = 2
    damaged = items[:hit] + [_damaged(items[hit], damage)] + items[hit + 1:]
    path = tmp_path / "stream.der"
    path.write_bytes(b"".join(damaged))
    offsets = [sum(len(i) for i in damaged[:k]) for k in range(len(damaged))]
    results = list(verify_bulk(path, anchors, **kw))
    assert [(r.code, r.item_offset) for r in results] == \
        [(Result.MALFORMED if k == hit else code, offsets[k]) for k, code in enumerate(alone)]
    with open(path, "rb") as fh:
        read = list(read_der_stream(fh, certificates=certificates))
    assert [i.data for i in read] == damaged
    check = verify_certificate_item if certificates else verify_cms_item
    assert [check(i.data, anchors, extra, check_time=False)[0] for i in read] == [r.code for r in results]


def test_garbage_between_items_is_one_malformed_item(tmp_path, rfc_pki, vectors):
    garbage = b"\x00\x00" * 500 + b"\x30\x82\x06\x09\x2a" + b"not DER"
    path = tmp_path / "s.der"
    path.write_bytes(garbage + vectors[0] + garbage + vectors[1])
    results = list(verify_bulk(path, [rfc_pki["vendor"]], extra_certs=[rfc_pki["masa"]], check_time=False))
    size = len(garbage) + len(vectors[0])
    assert [(r.code, r.item_offset) for r in results] == [
        (Result.MALFORMED, 0), (Result.OK, len(garbage)), (Result.MALFORMED, size),
        (Result.OK, size + len(garbage))]


def test_a_stream_is_read_one_batch_ahead_at_most(owner_ca):
    """Flat memory: items are pulled from the source only as batches need them, and
    certificates no longer in use leave the cache."""
    ca_key, ca = owner_ca
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(40):
            key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
            cert = issue_idevid(ca_key, ca, key.public_key, f"S{i}")   # a new signer each item
            pulled += 1
            yield sign_cms(str(i).encode(), key, cert)

    verifier = BulkVerifier([ca], threads=2, batch_size=8)
    cached = []
    for result in verifier.verify(source()):
        assert result.ok and result.serial == f"S{result.index}"
        assert pulled <= (result.index // 8 + 1) * 8
        cached.append(verifier.stats["cached_certs"])
    assert len(cached) == 40
    # The anchor plus the signers of this batch and the one before, however long the stream.
    assert max(cached) <= 1 + 2 * 8


def test_certificates_are_parsed_and_checked_once_per_batch(owner_ca):
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    cert = _issue(owner_ca, key.public_key, "shared registrar")
    items = [sign_cms(str(i).encode(), key, cert) for i in range(50)]
    verifier = BulkVerifier([owner_ca[1]], threads=2)
    assert all(r.ok for r in verifier.verify_batch(items))
    assert verifier.stats["cert_verifies"] == 1
    assert verifier.stats["cert_parses"] == 2      # the anchor and the registrar


# --------------------------------------------------------------------------- mutations

def _mutants(data: st.DataObject, item: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "length", "nest", "splice"]))
    buf = bytearray(item)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        buf = buf[:data.draw(st.integers(0, len(buf) - 1))]
    elif kind == "length":
        # Lie in a length field: find a header and claim more or less than is there.
        pos = data.draw(st.integers(0, len(buf) - 2))
        buf[pos + 1] = data.draw(st.sampled_from([0x00, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xff]))
    elif kind == "nest":
        depth = data.draw(st.integers(1, 2000))
        return b"\x30\x84\xff\xff\xff\xff" * depth + bytes(buf)
    else:
        pos = data.draw(st.integers(0, len(buf)))
        buf[pos:pos] = data.draw(st.binary(max_size=16))
    return bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_vectors_never_crash_and_agree(data, rfc_pki, vectors):
    anchors = [rfc_pki["vendor"], rfc_pki["owner"]]
    item = data.draw(st.sampled_from(vectors))
    mutant = _mutants(data, item)
    got = BulkVerifier(anchors, [rfc_pki["masa"]], threads=1, check_time=False).verify_batch([mutant])[0]
    want, _ = verify_cms_item(mutant, anchors, [rfc_pki["masa"]], check_time=False)
    assert got.code == want
    assert 0 <= got.content_offset <= got.content_offset + got.content_length <= len(mutant)


# Mutated serial numbers go negative; cryptography warns that it will refuse them one day.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_certificates_never_crash_and_agree(data, rfc_pki):
    """The manufacturing case: bare certificates checked against a CA."""
    anchors = [rfc_pki["vendor"], rfc_pki["owner"]]
    item = data.draw(st.sampled_from([c.public_bytes(Encoding.DER) for c in rfc_pki.values()]))
    mutant = _mutants(data, item)
    got = BulkVerifier(anchors, threads=1, check_time=False).verify_batch([mutant], certificates=True)[0]
    want, serial = verify_certificate_item(mutant, anchors, check_time=False)
    assert got.code == want
    assert got.serial == serial
    assert 0 <= got.content_offset <= got.content_offset + got.content_length <= len(mutant)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_are_malformed_not_crashes(blob):
    got = BulkVerifier([_cert("vendor.crt")], threads=1).verify_batch([blob, b"\x30" + blob])
    assert all(r.code is Result.MALFORMED for r in got)


def test_stream_reader_refuses_a_header_claiming_two_gib(tmp_path, rfc_pki, vectors):
    path = tmp_path / "lie.der"
    lie = b"\x30\x84\x7f\xff\xff\xff" + b"x" * 10
    path.write_bytes(lie + vectors[0])
    asked = []

    class Recording(io.BufferedReader):
        def read(self, size=-1):
            asked.append(size)
            return super().read(size)

    with Recording(io.FileIO(path)) as fh:
        items = list(read_der_stream(fh))
    # The lie is one MALFORMED item up to the next ContentInfo, which still verifies;
    # no read asks for anything near 2 GiB.
    assert [(i.data, i.offset) for i in items] == [(lie, 0), (vectors[0], len(lie))]
    assert 0 < max(asked) <= MAX_ITEM_BYTES
    results = list(verify_bulk(path, [rfc_pki["vendor"]], check_time=False))
    assert [(r.code, r.item_offset) for r in results] == [(Result.MALFORMED, 0), (Result.OK, len(lie))]
