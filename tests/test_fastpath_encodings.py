"""Encodings that are not DER, and deep nesting: the fastpath and the reference agree.

The reference CMS parser also reads BER (indefinite and non-minimal lengths,
constructed strings); the extension reads DER. Bulk items are DER, so both
call such an item MALFORMED. Items are rewritten here through a small element
tree so every enclosing length stays right and only the encoding changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectors import APPC
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import MAX_NESTING, der_framed, verify_cms_item
from pledgeforge.hsm.chain import load_certificate_file

CMS_VECTORS = ["vr_00-D0-E5-F2-00-02.der", "voucher_00-D0-E5-F2-00-02.der",
               "parboiled_vr_00-D0-E5-F2-00-02.der"]


@dataclass
class Node:
    tag: int
    body: bytes | list["Node"]      # a list for constructed elements
    header: str = "der"             # how the length is written (see _length); "raw": body
                                    # is the element's whole encoding, written as it is


def parse(data: bytes) -> Node:
    """A DER element as a tree (test inputs are the published vectors)."""
    return _parse_at(data, 0)[0]


def _parse_at(data: bytes, pos: int) -> tuple[Node, int]:
    """The element at pos and the position after it."""
    tag, length = data[pos], data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if not tag & 0x20:
        return Node(tag, data[start:end]), end
    children = []
    while start < end:
        child, start = _parse_at(data, start)
        children.append(child)
    return Node(tag, children), end


def _length(n: int, style: str) -> bytes:
    if style == "long":                     # long form where the short one fits, or padded
        return b"\x84" + n.to_bytes(4, "big")
    if style == "indefinite":
        return b"\x80"
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(node: Node) -> bytes:
    if node.header == "raw":
        return node.body
    body = node.body if isinstance(node.body, bytes) else b"".join(encode(c) for c in node.body)
    trailer = b"\x00\x00" if node.header == "indefinite" else b""
    return bytes([node.tag]) + _length(len(body), node.header) + body + trailer


def walk(node: Node) -> list[Node]:
    found = [node]
    if isinstance(node.body, list):
        for child in node.body:
            found += walk(child)
    return found


def nested(depth: int, inner: bytes = b"\x05\x00") -> bytes:
    """`inner` inside `depth` SEQUENCEs."""
    for _ in range(depth):
        inner = b"\x30" + _length(len(inner), "der") + inner
    return inner


@pytest.fixture(scope="module")
def anchors():
    return [load_certificate_file(str(APPC / name))[0] for name in ("vendor.crt", "ownerca_secp384r1.crt")]


@pytest.fixture(scope="module")
def extra():
    return load_certificate_file(str(APPC / "masa.crt"))


@pytest.fixture(scope="module")
def vectors():
    return [(APPC / n).read_bytes() for n in CMS_VECTORS]


def _both(items, anchors, extra):
    fast = BulkVerifier(anchors, extra, threads=1, check_time=False).verify_batch(items)
    ref = [verify_cms_item(i, anchors, extra, check_time=False)[0] for i in items]
    assert [r.code for r in fast] == ref
    return ref


def test_the_tree_round_trips(vectors):
    for der in vectors:
        assert encode(parse(der)) == der
        assert der_framed(der)


def _signed_data(tree: Node) -> Node:
    return tree.body[1].body[0]                 # ContentInfo > [0] > SignedData


@pytest.mark.parametrize("style", ["long", "indefinite"])
@pytest.mark.parametrize("where", ["outermost", "signed-data", "encap-content", "signer-info"])
def test_ber_lengths_are_malformed_for_both(vectors, anchors, extra, style, where):
    tree = parse(vectors[0])
    signed_data = _signed_data(tree)
    node = {"outermost": tree, "signed-data": signed_data, "encap-content": signed_data.body[2],
            "signer-info": signed_data.body[-1].body[0]}[where]
    node.header = style
    assert _both([vectors[0], encode(tree)], anchors, extra) == [Result.OK, Result.MALFORMED]


def test_constructed_econtent_is_malformed_for_both(vectors, anchors, extra):
    """BER may split an OCTET STRING into chunks; the content would then not be one
    run of bytes a caller can read in place."""
    tree = parse(vectors[0])
    econtent = _signed_data(tree).body[2].body[1].body[0]
    assert econtent.tag == 0x04
    half = len(econtent.body) // 2
    econtent.tag, econtent.body = 0x24, [Node(0x04, econtent.body[:half]),
                                         Node(0x04, econtent.body[half:])]
    assert _both([encode(tree)], anchors, extra) == [Result.MALFORMED]


def test_nesting_in_an_unread_field_up_to_the_limit(vectors, anchors, extra):
    """A trailing SignedData element neither verifier reads: fine while nesting stays
    within MAX_NESTING, MALFORMED for both past it."""
    results = []
    for depth in (1, MAX_NESTING - 3, MAX_NESTING - 2, 500):
        tree = parse(vectors[0])
        _signed_data(tree).body.append(Node(0x30, nested(depth), "raw"))  # SignedData: 3 deep
        results.append(_both([encode(tree)], anchors, extra)[0])
    assert results == [Result.OK, Result.OK, Result.MALFORMED, Result.MALFORMED]


def test_a_carried_certificate_of_length_128_plus_256k_reads_as_received(anchors, extra):
    """A certificate whose definite length header ends in 0x80 (here 30 82 02 80), carried
    but not on the path (the parboiled request's copy of the owner's root): asn1crypto
    takes such a header for an indefinite length and re-encodes the certificate, which
    fails on a domainComponent that is not an IA5String. Both verifiers read it as
    received and accept the request."""
    tree = parse((APPC / "parboiled_vr_00-D0-E5-F2-00-02.der").read_bytes())
    root_copy = _signed_data(tree).body[3].body[1]
    domain_component = next(n for n in walk(root_copy) if n.tag == 0x16 and n.body == b"sandelman")
    domain_component.body, domain_component.header = nested(10, encode(domain_component)), "raw"
    assert encode(root_copy)[:4] == b"\x30\x82\x02\x80"
    assert _both([encode(tree)], anchors, extra) == [Result.OK]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_element_reencoded_agrees(data, vectors, anchors, extra):
    item = data.draw(st.sampled_from(vectors))
    tree = parse(item)
    nodes = walk(tree)
    node = data.draw(st.sampled_from(nodes))
    style = data.draw(st.sampled_from(["long", "indefinite", "wrap"]))
    if style == "indefinite" and not isinstance(node.body, list):
        style = "long"
    if style == "wrap":
        # The element inside `depth` extra SEQUENCEs, lengths all correct.
        depth = data.draw(st.integers(1, 3 * MAX_NESTING))
        node.body, node.header = nested(depth, encode(node)), "raw"
    else:
        node.header = style
    mutant = encode(tree)
    code = _both([mutant], anchors, extra)[0]
    if style != "wrap":
        assert code is Result.MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_der_framing_rule_is_the_extensions(blob):
    """Random bytes in a CMS-shaped shell: the verdicts agree (both read the framing
    the same way), and anything not DER-framed is MALFORMED."""
    anchors = [load_certificate_file(str(APPC / "vendor.crt"))[0]]
    item = b"\x30" + _length(len(blob), "der") + blob
    fast = BulkVerifier(anchors, threads=1).verify_batch([item, blob])
    for der, got in zip([item, blob], fast):
        assert got.code is verify_cms_item(der, anchors)[0]
        if not der_framed(der):
            assert got.code is Result.MALFORMED


def test_every_element_retagged_agrees(vectors, anchors, extra):
    """Each element of a voucher-request given another type, with the content intact
    and with it altered: the two verifiers read the fields in the same order, so
    they fail at the same step (a mistyped signature after a digest mismatch is a
    DIGEST_MISMATCH, a [1] certificate choice that is no attribute certificate is
    MALFORMED, ...)."""
    altered = bytearray(vectors[1])
    at = altered.index(b'"serial-number"') + 2
    altered[at] ^= 0x01
    items = []
    for base in (vectors[1], bytes(altered)):
        for index in range(1, len(walk(parse(base)))):
            for tag in (0x02, 0x04, 0x05, 0x06, 0x30, 0x31, 0xa0, 0xa1):
                tree = parse(base)
                node = walk(tree)[index]
                if node.tag == tag or (isinstance(node.body, bytes) and tag & 0x20):
                    continue
                if isinstance(node.body, list) and not tag & 0x20:
                    node.body = b"".join(encode(child) for child in node.body)
                node.tag = tag
                items.append(encode(tree))
    codes = _both(items, anchors, extra)
    assert {Result.MALFORMED, Result.DIGEST_MISMATCH, Result.OK} <= set(codes)


def test_untyped_attribute_values_agree(vectors, anchors, extra):
    """Signed attributes of a type the reference has no value type for are read
    untyped (by tag number, whatever the class): the fastpath accepts and refuses
    the same values, and the same elements trailing an attribute."""
    from asn1crypto.core import ObjectIdentifier as Asn1Oid

    contents = [b"", b"abc", b"\x00", b"\x07\x80", b"\xff\xfe\x00\x41", b"\x00\x00\x00\x41",
                b"210413214323Z", b"210413314323Z", b"\x02\x01\x05\x0c\x02hi", b"\x05\x00",
                b"\xc3\xa9", b"\x80\x81"]
    items = []
    for number in range(31):
        for tag in (number, 0x80 | number):
            for body in contents:
                for where in ("value", "trailing"):
                    tree = parse(vectors[0])
                    attribute = _signed_data(tree).body[-1].body[0].body[3].body[1]
                    element = Node(tag, body)
                    if where == "value":
                        attribute.body[0] = parse(Asn1Oid("1.2.3.4").dump())
                        attribute.body[1] = Node(0x31, [element])
                    else:
                        attribute.body.append(element)
                    item = encode(tree)
                    if der_framed(item):
                        items.append(item)
    codes = _both(items, anchors, extra)
    assert {Result.MALFORMED, Result.BAD_SIGNATURE} == set(codes)
