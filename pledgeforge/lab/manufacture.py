"""The lab's factory: a TPM maker for its boards, and a manufacturing station with its CA.

Boards made for a lab are started with `pledgeforge board run --factory-new
--tpm-maker D/tpm-maker`: a TPM board's swtpm is born with EK certificates
from the lab's TPM maker, as a real TPM ships with its maker's. The lab's
station (pledgeforge/station) provisions each board over its console with
the lab's manufacturer CA, whose PIN only the lab's own process holds,
records it in D/db/manufacturing.sqlite, and the lab imports what that
database exports for its MASA, cloud registrar and owner registrar (the
owner and flow given): the same files `pledgeforge provision export` writes
and `masa add-device --from` / `registrar add-pledge --from` /
`registrar set-response --from` read.
"""

from __future__ import annotations

from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.tpm_maker_ca import TpmMakerCa, create_tpm_maker_ca
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from pledgeforge.station.export import masa_records, ownership_records, read_masa, read_ownership, to_lines
from pledgeforge.station.provisioner import BoardResult, Station, StationConfig
from pledgeforge.station.records import ManufacturingDb

from .databases import OWNER_NAME, LabDatabases, check_flow
from .layout import LabLayout

STATION_NAME = "lab station"


def tpm_maker(lab: LabLayout) -> TpmMakerCa:
    """The TPM maker of the lab's boards (made on first use)."""
    return create_tpm_maker_ca(lab.tpm_maker_dir)


def station_config(lab: LabLayout, *, timeout: float | None = None) -> StationConfig:
    """The lab's station: its manufacturer CA, MASA, cloud registrar, anchors, firmware key."""
    maker = tpm_maker(lab)
    options = {} if timeout is None else {"timeout": timeout}
    return StationConfig(
        ca_signer=keystore.open_signer(lab.key_uri("manufacturer", "manufacturer-ca")),
        ca_certificate=load_certificate_file(str(lab.pki("manufacturer-ca")))[0],
        masa_url=lab.masa_url, cloud_registrar_url=lab.url("cloud"),
        trust_anchors_pem=lab.pki("manufacturer-ca").read_bytes(),
        cloud_anchors_pem=lab.pki("web-ca").read_bytes(),
        image_key_pem=lab.firmware_key_pem(),
        tpm_maker_roots=[maker.root], tpm_maker_intermediates=[maker.issuer],
        name=STATION_NAME, **options)


def station(lab: LabLayout, **options) -> Station:
    return Station(station_config(lab, **options), ManufacturingDb(lab.manufacturing_db_url))


def import_ownership(lab: LabLayout, databases: LabDatabases, serials: list[str], flow: str) -> None:
    """What the station exports for `serials`, imported by the lab's servers: the MASA's devices
    (the lab's owner; its EST server for the est-domain flow) and the registrars' pledges."""
    check_flow(flow)
    boards = ManufacturingDb(lab.manufacturing_db_url).boards(serials)
    est_domain = lab.url("owner") if flow == "est-domain" else None
    databases.import_masa(read_masa(to_lines(masa_records(boards, OWNER_NAME, est_domain)).decode()))
    location = lab.url("owner") + REQUEST_VOUCHER if flow == "redirect" else None
    databases.import_ownership(read_ownership(to_lines(ownership_records(boards, flow, location)).decode()))


def manufacture_board(lab: LabLayout, databases: LabDatabases, port: str, flow: str = "redirect",
                      **options) -> BoardResult:
    """Provision the factory-new board at `port` with the lab's station and make the lab's
    servers know it for `flow`; raises the station's error when the board was not provisioned."""
    check_flow(flow)
    result = station(lab, **options).provision(port)
    if not result.ok:
        raise result.failure
    import_ownership(lab, databases, [result.serial], flow)
    return result


__all__ = ["tpm_maker", "station_config", "station", "import_ownership", "manufacture_board",
           "STATION_NAME"]
