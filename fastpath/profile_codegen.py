"""Generate the extension's constants from the verification profile and the result codes.

setup.py runs this before Cython compiles the extension: it writes
fastpath/_profile.pxd from hsm/verification_profile.py (limits, hashes, algorithm,
key type and curve tables, name string types) and fastpath/results.py (the result
codes), so the Cython sources name these values and never spell them out. Both
sources are plain data read by path, so a build needs nothing installed.

The generated file carries a fingerprint of what it was made from; the extension
refuses to verify when its fingerprint differs from that of the profile and
results it runs with (an extension built before the profile changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
from typing import Mapping

#: Where the generated declarations go, relative to the checkout.
PXD_PATH = os.path.join("fastpath", "_profile.pxd")
PROFILE_PATH = os.path.join("hsm", "verification_profile.py")
RESULTS_PATH = os.path.join("fastpath", "results.py")

# Text checks of name strings, by the encoding or alphabet the profile names.
_TEXT_CHECKS = {"utf-8": 1, "utf-16-be": 2, "utf-32-be": 3, "printable": 4}


def oid_der(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (X.690 8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"not an object identifier: {dotted}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _data(profile: Mapping) -> dict:
    """The profile's public values (its UPPER_CASE names)."""
    return {k: v for k, v in profile.items() if k.isupper() and not k.startswith("_")}


def fingerprint(profile: Mapping, results) -> str:
    """A digest of the profile's values and the result codes."""
    text = json.dumps({"profile": _data(profile), "results": [(r.name, int(r)) for r in results]},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _c_bytes(data: bytes) -> str:
    return "{" + ",".join(f"0x{b:02x}" for b in data) + "}"


class _Writer:
    """Collects the C definitions and their Cython declarations."""

    def __init__(self):
        self.c: list[str] = []
        self.decl: list[str] = []
        self._names: set[str] = set()

    def oid(self, dotted: str, name: str | None = None) -> str:
        """The C byte array of an OID's content octets, defined once; its name. Named
        ones are declared to Cython; table entries (PF_OID_1_2_840_...) are not."""
        c_name = name or "PF_OID_" + dotted.replace(".", "_")
        if c_name not in self._names:
            self._names.add(c_name)
            der = oid_der(dotted)
            self.c.append(f"static const unsigned char {c_name}[] PF_UNUSED = {_c_bytes(der)};  /* {dotted} */")
            if name:
                self.decl.append(f"const uint8_t {c_name}[{len(der)}]")
        return c_name

    def table(self, name: str, rows: list[tuple[str, str, int, int, int]]) -> None:
        """An OidEntry table: (dotted OID, comment, kind, hash, flag) per row."""
        entries = [f"    {{{self.oid(dotted)}, {len(oid_der(dotted))}, {kind}, {hash_id}, {flag}}},  /* {comment} */"
                   for dotted, comment, kind, hash_id, flag in rows]
        self.c.append(f"static const pf_oid_entry {name}[] PF_UNUSED = {{\n" + "\n".join(entries) + "\n};")
        self.decl.append(f"const OidEntry {name}[{len(rows)}]")

    def byte_table(self, name: str, size: int, values: dict[int, int]) -> None:
        """unsigned char name[size], zero but for `values` (index: value)."""
        body = ", ".join(f"[{k}]={v}" for k, v in sorted(values.items()))
        self.c.append(f"static const unsigned char {name}[{size}] PF_UNUSED = {{{body}}};")
        self.decl.append(f"const uint8_t {name}[{size}]")


def generate(profile: Mapping, results) -> str:
    """The text of _profile.pxd."""
    p = _data(profile)
    hashes = list(p["HASHES"])
    hash_ids = {name: i + 1 for i, name in enumerate(hashes)}
    schemes = list(p["SIGNATURE_SCHEMES"])
    scheme_ids = {name: i + 1 for i, name in enumerate(schemes)}
    h_from = {p["DIGEST_ALGORITHM"]: -1, p["PSS_PARAMETERS"]: -2, None: 0}

    def hash_ref(name) -> int:
        if name in h_from:
            return h_from[name]
        if name not in hash_ids:
            raise ValueError(f"verification profile names an unknown hash {name!r}")
        return hash_ids[name]

    def scheme_ref(name) -> int:
        if name not in scheme_ids:
            raise ValueError(f"verification profile names an unknown signature scheme {name!r}")
        return scheme_ids[name]

    w = _Writer()
    # Each module that cimports this file gets its own copy of the tables and uses a few.
    w.c.append("#define PF_UNUSED __attribute__((unused))")
    w.c.append("typedef struct { const unsigned char *der; size_t len; int kind; int hash; int flag; } "
               "pf_oid_entry;")
    w.oid(p["SIGNED_DATA"], "PF_OID_SIGNED_DATA")
    w.oid(p["CONTENT_TYPE_ATTRIBUTE"], "PF_OID_ATTR_CONTENT_TYPE")
    w.oid(p["MESSAGE_DIGEST_ATTRIBUTE"], "PF_OID_ATTR_MESSAGE_DIGEST")
    w.oid(p["SIGNING_TIME_ATTRIBUTE"], "PF_OID_ATTR_SIGNING_TIME")
    w.oid(p["SERIAL_NUMBER_ATTRIBUTE"], "PF_OID_AT_SERIAL_NUMBER")
    w.oid(p["UNIQUE_IDENTIFIER_ATTRIBUTE"], "PF_OID_AT_UNIQUE_IDENTIFIER")

    w.table("PF_HASHES", [(oid, name, 0, hash_ids[name], 0) for name, (oid, _) in p["HASHES"].items()])
    names = ", ".join(f'"{openssl}"' for _, openssl in p["HASHES"].values())
    w.c.append(f"static const char *const PF_HASH_LIBCRYPTO_NAMES[] PF_UNUSED = {{NULL, {names}}};")
    w.decl.append(f"const char *const PF_HASH_LIBCRYPTO_NAMES[{len(hashes) + 1}]")
    w.byte_table("PF_CMS_DIGEST_ALLOWED", len(hashes) + 1, {hash_ref(name): 1 for name in p["CMS_DIGESTS"]})
    w.table("PF_CONTENT_TYPES", [(oid, name, 0, 0, 0) for name, oid in p["CONTENT_TYPES"].items()])
    w.table("PF_CMS_SIGNATURE_ALGORITHMS",
            [(oid, name, scheme_ref(scheme), hash_ref(h), 0)
             for oid, (name, scheme, h) in p["CMS_SIGNATURE_ALGORITHMS"].items()])
    w.table("PF_CERTIFICATE_SIGNATURE_ALGORITHMS",
            [(oid, f"{scheme}, {h or 'no hash'}" + ("" if checkable else ", not checkable"), scheme_ref(scheme),
              hash_ref(h), int(checkable))
             for oid, (scheme, h, checkable) in p["CERTIFICATE_SIGNATURE_ALGORITHMS"].items()])
    w.table("PF_PUBLIC_KEY_TYPES", [(oid, name, 0, 0, 0) for oid, name in p["PUBLIC_KEY_TYPES"].items()])
    w.table("PF_NAMED_CURVES", [(oid, name, 0, 0, 0) for oid, name in p["NAMED_CURVES"].items()])
    curves = ", ".join(f'"{name}"' for name in p["EXPLICIT_CURVES"])
    w.c.append(f"static const char *const PF_EXPLICIT_CURVES[] PF_UNUSED = {{{curves}}};")
    w.decl.append(f"const char *const PF_EXPLICIT_CURVES[{len(p['EXPLICIT_CURVES'])}]")

    strings = p["NAME_STRING_TYPES"]
    w.byte_table("PF_NAME_TEXT", 256, {tag: _TEXT_CHECKS[text] for tag, (_, text, _) in strings.items()})
    w.byte_table("PF_NAME_LOAD_CHECK", 256,
                 {tag: _TEXT_CHECKS[check] for tag, (_, _, check) in strings.items() if check})
    w.byte_table("PF_PRINTABLE", 256, {ord(ch): 1 for ch in p["PRINTABLE_CHARACTERS"]})
    w.c.append(f'static const char *const PF_PROFILE_FINGERPRINT PF_UNUSED = "{fingerprint(profile, results)}";')
    w.decl.append("const char *const PF_PROFILE_FINGERPRINT")

    lines = [
        "# Generated from hsm/verification_profile.py and fastpath/results.py by",
        "# fastpath/profile_codegen.py each time the extension is built. Do not edit.",
        "",
        "from libc.stdint cimport uint8_t",
        "",
        "cdef extern from *:",
        '    """',
        *("    " + line for block in w.c for line in block.splitlines()),
        '    """',
        '    ctypedef struct OidEntry "pf_oid_entry":',
        "        const uint8_t *der",
        "        size_t len",
        "        int kind        # a scheme (S_*), where the table has one",
        "        int hash        # a hash (H_*), H_FROM_DIGEST or H_FROM_PSS_PARAMS",
        "        int flag        # certificate signatures: checkable",
        *("    " + d for d in w.decl),
        "",
        "# Result codes (pledgeforge.fastpath.Result).",
        "cdef enum:",
        *(f"    R_{r.name} = {int(r)}" for r in results),
        f"    RESULT_COUNT = {len(list(results))}",
        "",
        "# Hashes, by their index in PF_HASHES + 1.",
        "cdef enum:",
        "    H_NONE = 0",
        *(f"    H_{name.upper()} = {i}" for name, i in hash_ids.items()),
        f"    H_COUNT = {len(hashes) + 1}",
        "    H_FROM_DIGEST = -1      # the SignerInfo's digestAlgorithm",
        "    H_FROM_PSS_PARAMS = -2  # the hash RSASSA-PSS-params name",
        "",
        "# Signature schemes.",
        "cdef enum:",
        "    S_UNSUPPORTED = 0",
        *(f"    S_{name.upper().replace('-', '_')} = {i}" for name, i in scheme_ids.items()),
        "",
        "# Text checks of name strings (PF_NAME_TEXT, PF_NAME_LOAD_CHECK).",
        "cdef enum:",
        "    TEXT_NONE = 0",
        *(f"    TEXT_{name.upper().replace('-', '')} = {i}" for name, i in _TEXT_CHECKS.items()),
        "",
        "# Limits and table sizes.",
        "cdef enum:",
        f"    MAX_DEPTH = {p['MAX_CHAIN_DEPTH']}",
        f"    MAX_NESTING = {p['MAX_NESTING']}",
        f"    MAX_OID_LENGTH = {p['MAX_OID_LENGTH']}",
        f"    N_HASHES = {len(hashes)}",
        f"    N_CONTENT_TYPES = {len(p['CONTENT_TYPES'])}",
        f"    N_CMS_SIGNATURE_ALGORITHMS = {len(p['CMS_SIGNATURE_ALGORITHMS'])}",
        f"    N_CERTIFICATE_SIGNATURE_ALGORITHMS = {len(p['CERTIFICATE_SIGNATURE_ALGORITHMS'])}",
        f"    N_PUBLIC_KEY_TYPES = {len(p['PUBLIC_KEY_TYPES'])}",
        f"    N_NAMED_CURVES = {len(p['NAMED_CURVES'])}",
        f"    N_EXPLICIT_CURVES = {len(p['EXPLICIT_CURVES'])}",
        "",
    ]
    return "\n".join(lines)


def load_sources(root: str) -> tuple[dict, object]:
    """The profile's namespace and the Result enum, read by path from a checkout."""
    profile = runpy.run_path(os.path.join(root, PROFILE_PATH))
    results = runpy.run_path(os.path.join(root, RESULTS_PATH))["Result"]
    return profile, results


def write_pxd(root: str) -> str:
    """Write fastpath/_profile.pxd under root when its text changed (an unchanged file
    keeps its time, so Cython does not recompile); its path."""
    profile, results = load_sources(root)
    text = generate(profile, results)
    path = os.path.join(root, PXD_PATH)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return path
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
