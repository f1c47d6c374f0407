"""What the lab's servers know about owners and pledges: their databases, administered directly.

The servers read their databases per request, so registering a pledge or
changing the cloud registrar's answer while they run takes effect at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pledgeforge.atomicfile import atomic_write
from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from .layout import LabError, LabLayout

if TYPE_CHECKING:
    # The stores (SQLAlchemy) are imported when a database is first opened: the lab's
    # commands that only read lab.json or talk to the servers never load them.
    from pledgeforge.registrar.db import CloudStore, MasaStore, OwnerStore

#: the one owner of the lab: its registrar is the owner registrar, its CA the owner CA
OWNER_NAME = "lab-owner"
FLOWS = ("redirect", "est-domain")


def check_flow(flow: str) -> str:
    if flow not in FLOWS:
        raise LabError(f"flow must be redirect or est-domain, not {flow!r}")
    return flow


class LabDatabases:
    """The MASA's, the cloud registrar's and the owner registrar's databases of one lab."""

    def __init__(self, lab: LabLayout):
        self.lab = lab
        self._stores: dict[str, object] = {}

    def masa_store(self) -> MasaStore:
        return self._store("masa")

    def cloud_store(self) -> CloudStore:
        return self._store("cloud")

    def owner_store(self) -> OwnerStore:
        return self._store("owner")

    def _store(self, role: str):
        if role not in self._stores:
            from pledgeforge.registrar.db import CloudStore, MasaStore, OwnerStore

            kind = {"masa": MasaStore, "cloud": CloudStore, "owner": OwnerStore}[role]
            self._stores[role] = kind(self.lab.database_url(role))
        return self._stores[role]

    def close(self) -> None:
        for store in self._stores.values():
            store.engine.dispose()
        self._stores.clear()

    def register_pledge(self, serial: str, flow: str, additional_configuration: bytes | None = None) -> None:
        """Ownership for `flow`: the owner's pledge list, the MASA's record, the cloud's answer.

        redirect: the cloud registrar answers 307 to the owner registrar;
        est-domain: it answers with a voucher whose est-domain is the owner registrar.
        """
        check_flow(flow)
        lab = self.lab
        config_url = None
        if additional_configuration is not None:
            atomic_write(lab.dir / "owner-config" / f"{serial}.json", additional_configuration)
            config_url = f"{lab.url('owner')}/pledge-config/{serial}.json"
        self.owner_store().add_pledge(serial, flow)
        self.masa_store().set_device(serial, OWNER_NAME,
                                     est_domain=lab.url("owner") if flow == "est-domain" else None,
                                     additional_configuration_url=config_url)
        if flow == "redirect":
            self.set_cloud_response(serial, CloudResponse.REDIRECT)
        else:
            self.set_cloud_response(serial, CloudResponse.VOUCHER)

    def import_masa(self, devices) -> None:
        """Devices of a station's masa export (station/export.py MasaDevice), as
        `masa add-device --from` imports them."""
        for device in devices:
            self.masa_store().set_device(device.serial, device.owner, device.est_domain,
                                         device.additional_configuration_url)

    def import_ownership(self, pledges) -> None:
        """Pledges of a station's ownership export (station/export.py Ownership): the owner
        registrar's pledge list and the cloud registrar's answer, as `registrar add-pledge
        --from` and `registrar set-response --from` import them."""
        for pledge in pledges:
            check_flow(pledge.flow)
            self.owner_store().add_pledge(pledge.serial, pledge.flow)
            self.set_cloud_response(pledge.serial, pledge.response, location=pledge.location)

    def set_cloud_response(self, serial: str, response: str, *, location: str | None = None,
                           retry_after: int | None = None, times: int | None = None,
                           then: str | None = None, endpoint: str = "main") -> None:
        """What the cloud registrar answers `serial`'s voucher-requests on `endpoint`.

        response and then: a CloudResponse or its name (pledgeforge.hsm.cloud_responses);
        a redirect's location defaults to the owner registrar, and accepted needs
        retry_after. With times=N and then=R it answers `response` N times, then R.
        Redirect chains and loops use the second endpoint "var": e.g. main -> var
        (location=lab.url("cloud", "var")) and var -> owner, or var -> main for a loop.
        """
        if CloudResponse.REDIRECT in (response, then):
            location = location or self.lab.url("owner") + REQUEST_VOUCHER
        elif location is not None and "://" not in location:
            raise LabError(f"location {location!r} is not a URL")
        if location is not None and location.rstrip("/").count("/") == 2:
            location = location.rstrip("/") + REQUEST_VOUCHER
        if response == CloudResponse.ACCEPTED and retry_after is None:
            raise LabError("a 202 answer needs retry_after (RFC 7030 4.2.3)")
        self.cloud_store().set_response(serial, response, endpoint=endpoint, location=location,
                                        retry_after=retry_after, times=times, then=then)

    def set_cloud_overloaded(self, retry_after: int | None) -> None:
        """Answer every voucher-request with 503 + Retry-After; None switches that off."""
        self.cloud_store().set_overloaded(retry_after)
