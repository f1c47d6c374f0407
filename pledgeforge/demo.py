"""The demo: a lab, two boards, both cloud registrar flows, driven over their consoles.

It does what a factory and a bench script would: starts the lab's servers,
starts each board factory-new as its own `pledgeforge board run --factory-new`
process (a pty console), has the lab's manufacturing station provision it over
that console (IDevID key generated in the board's TPM or secure element, TPM
attestation or the token's report, IDevID from the manufacturer CA, anchors and
firmware key installed, board locked, recorded, and handed on to the lab's
MASA and registrars), power-cycles it into its firmware, waits for the boot,
logs in, types `bootstrap`, and reads what the board printed. The boards are
one per flow and one per key store kind:

    gateway-tpm  (swtpm, ECC P-256)    redirect: 307 to the owner registrar
    mcu-se       (SoftHSM, ECC P-256)  est-domain: voucher from the cloud registrar

What each board ended up with is copied out of its flash into
`<dir>/pledges/<serial>/`, named as `pledgeforge pledge bootstrap` names them,
together with the CA certificates that check them, and the summary lists the
openssl commands that do:

    idevid.crt           the IDevID (from the manufacturer CA)
    manufacturer-ca.crt  the board's built-in voucher anchor: checks the IDevID and the voucher
    voucher.p7b          the voucher (DER CMS, signed by the MASA)
    ldevid.crt           the LDevID (from the owner's EST CA)
    cacerts.pem          the owner's EST CA certificates: check the LDevID
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pexpect
from cryptography import x509

from pledgeforge import bench
from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import PledgeforgeError
from pledgeforge.boards.flash import FLASH_FILE, decode_image
from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import Profile, load_profile

BOARDS = (("gateway-tpm", "redirect"), ("mcu-se", "est-domain"))
#: bootstrap over a console can take a while on a loaded machine
CONSOLE_TIMEOUT_S = 60.0
_STATE_LINE = re.compile(r"^-> (\S+)", re.M)
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


@dataclass
class BoardSummary:
    board: str
    flow: str
    keystore: str
    serial: str = ""
    state: str = "not started"
    states: list[str] = field(default_factory=list)
    idevid_subject: str | None = None
    ldevid_subject: str | None = None
    console: str | None = None
    transcript: str | None = None
    attach: str | None = None
    power: str | None = None
    pid: int | None = None
    state_dir: str = ""
    error: str | None = None
    #: how the station made it: assurance, station, seconds, steps, bytes over the console
    manufactured: dict = field(default_factory=dict)
    #: what the board holds, as files (idevid, manufacturer_ca, voucher, ldevid, cacerts)
    files: dict[str, str] = field(default_factory=dict)
    #: shell commands (openssl) that check those files; each exits 0 when its file is good
    checks: list[str] = field(default_factory=list)


class BoardConsole:
    """A board's console with its profile: how to log in, what the prompt is."""

    def __init__(self, path: str, profile: Profile, timeout: float = CONSOLE_TIMEOUT_S):
        self.profile = profile
        self.prompt = profile.console.prompt
        self.child = bench.open_console(path, timeout)

    def boot_and_login(self) -> None:
        self.child.expect_exact("Hit any key to stop autoboot")
        console = self.profile.console
        if console.login:
            bench.login(self.child, console.username, console.password, self.prompt)
        else:
            self.child.expect_exact(self.prompt)

    def run(self, command: str) -> str:
        """Type a command; its output (LF line ends) without the echo and the prompt."""
        return bench.run(self.child, command, self.prompt).replace("\r\n", "\n")

    def close(self) -> None:
        self.child.close()


def _subject(pem_text: str) -> str | None:
    match = _PEM.search(pem_text)
    if not match:
        return None
    return x509.load_pem_x509_certificate(match.group(0).encode()).subject.rfc4514_string()


def _status_field(status: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}: +(.*)$", status, re.M)
    return match.group(1).strip() if match else ""


def drive_board(console: BoardConsole, summary: BoardSummary, say: Callable[[str], None]) -> None:
    """Boot, login, bootstrap; fill in `summary` from what the console printed."""
    console.boot_and_login()
    status = console.run("status")
    summary.serial = _status_field(status, "serial")
    summary.idevid_subject = _subject(console.run("idevid"))
    say(f"{summary.board}: booted, serial {summary.serial}; bootstrap ({summary.flow})")
    out = console.run("bootstrap")
    summary.states = _STATE_LINE.findall(out)
    for line in out.splitlines():
        if line.startswith("-> "):
            say(f"  {summary.board}: {line[3:]}")
    summary.state = _status_field(console.run("status"), "state")
    summary.ldevid_subject = _subject(console.run("ldevid"))
    if summary.state != "enrolled":
        last = [line for line in out.splitlines() if line.strip()][-1:] or ["(nothing printed)"]
        summary.error = last[0]


def manufacture(lab, summary: BoardSummary, state_dir: Path, say: Callable[[str], None]) -> None:
    """The factory: the lab's station provisions the board over its console, the lab's servers
    learn of it, and the board is power-cycled into its firmware."""
    say(f"{summary.board}: factory-new; manufacturing over {state_dir / 'console'}")
    result = lab.manufacture_board(str(state_dir / "console"), summary.flow)
    summary.serial = result.serial
    summary.manufactured = {"assurance": result.assurance, "station": result.record.station,
                            "seconds": round(result.seconds, 2), "steps": result.steps,
                            "bytes": {"to_board": result.bytes_out, "from_board": result.bytes_in},
                            "record": lab.manufacturing_db_url}
    say(f"  {summary.board}: {result.serial} {result.assurance}, IDevID issued, locked "
        f"({result.seconds:.1f} s, {result.bytes_out + result.bytes_in} bytes over the console)")
    power_request(state_dir, "cycle")


def save_artefacts(summary: BoardSummary, state_dir: Path, directory: Path, est_ca: Path) -> None:
    """Copy the board's IDevID, voucher and LDevID out of its flash into
    `directory/pledges/<serial>/`, with the CA certificates that check them, and
    fill in `summary.files` and `summary.checks` (the openssl commands)."""
    flash_path = state_dir / FLASH_FILE
    state = decode_image(flash_path.read_bytes(), flash_path)
    if not state.serial_number or state.identity is None:
        return
    out = directory / "pledges" / state.serial_number
    contents = {
        "idevid": ("idevid.crt", state.identity.idevid_pem.encode()),
        "manufacturer_ca": ("manufacturer-ca.crt", "".join(state.identity.masa_anchors_pem).encode()),
        "voucher": ("voucher.p7b", state.voucher),
        "ldevid": ("ldevid.crt", state.ldevid_pem.encode() if state.ldevid_pem else None),
        "cacerts": ("cacerts.pem", est_ca.read_bytes() if state.ldevid_pem else None),
    }
    for name, (file_name, data) in contents.items():
        if data:
            atomic_write(out / file_name, data)
            summary.files[name] = str(out / file_name)
    q = {name: shlex.quote(path) for name, path in summary.files.items()}
    summary.checks = [f"openssl verify -CAfile {q['manufacturer_ca']} {q['idevid']}"]
    if "voucher" in q:
        # -purpose any: the MASA's certificate is not an S/MIME one, and need not be.
        summary.checks.append(f"openssl cms -verify -inform DER -in {q['voucher']} "
                              f"-CAfile {q['manufacturer_ca']} -purpose any")
    if "ldevid" in q:
        summary.checks.append(f"openssl verify -CAfile {q['cacerts']} {q['ldevid']}")


def run_demo(directory: Path, *, keep: bool = False, say: Callable[[str], None] = lambda s: None) -> dict:
    """Run the whole demo in `directory`; the summary as a JSON-ready dict."""
    from pledgeforge.lab import Lab

    directory = directory.resolve()
    lab_dir = directory / "lab"
    say(f"lab: starting MASA, cloud registrar and owner registrar in {lab_dir}")
    lab, _ = Lab.up(lab_dir)
    for role in ("masa", "cloud", "owner"):
        say(f"lab: {role:5} {lab.url(role)}")
    boards: list[bench.BoardProcess] = []
    summaries: list[BoardSummary] = []
    try:
        for name, flow in BOARDS:
            profile = load_profile(name)
            state_dir = directory / "boards" / name
            summary = BoardSummary(board=name, flow=flow,
                                   keystore=f"{profile.keystore.type} ({profile.keystore.algorithm.value})",
                                   state_dir=str(state_dir))
            summaries.append(summary)
            process = bench.BoardProcess(name, state_dir, "--factory-new",
                                         "--tpm-maker", lab.tpm_maker_dir)
            boards.append(process)
            process.start()
            summary.console = process.info["console"]
            summary.transcript = process.info.get("transcript")
            summary.power = process.info.get("power")
            summary.pid = process.proc.pid
            summary.attach = f"picocom -b {profile.console.baud} {state_dir / 'console'}"
            try:
                manufacture(lab, summary, state_dir, say)
            except PledgeforgeError as exc:
                summary.error, summary.state = f"manufacturing failed: {exc}", "failed"
                continue
            console = BoardConsole(str(state_dir / "console"), profile)
            try:
                drive_board(console, summary, say)
            except (pexpect.TIMEOUT, pexpect.EOF) as exc:
                summary.error = f"the console stopped answering ({type(exc).__name__})"
                summary.state = "failed"
            finally:
                console.close()
            save_artefacts(summary, state_dir, directory, lab.pki("owner-ca"))
    finally:
        if not keep:
            for process in boards:
                process.stop()
            lab.down()
    ok = bool(summaries) and all(s.state == "enrolled" for s in summaries)
    return {"ok": ok, "dir": str(directory), "lab": str(lab_dir), "kept_running": keep,
            "boards": [asdict(s) for s in summaries]}


def _made(manufactured: dict) -> str:
    """How the station made a board, on one line ("-" when it was not)."""
    if not manufactured:
        return "-"
    return (f"{manufactured['assurance']} by {manufactured['station']} in {manufactured['seconds']} s "
            f"({' > '.join(manufactured['steps'])})")


def summary_text(result: dict) -> str:
    lines = ["", "pledgeforge demo: " + ("every board enrolled" if result["ok"] else "FAILED"), ""]
    for board in result["boards"]:
        lines += [
            f"{board['board']}  [{board['keystore']}]  flow {board['flow']}  serial {board['serial']}",
            f"  result : {board['state']}" + (f" ({board['error']})" if board["error"] else ""),
            f"  made   : {_made(board['manufactured'])}",
            f"  states : {' > '.join(board['states']) or '-'}",
            f"  IDevID : {board['idevid_subject'] or '-'}",
            f"  LDevID : {board['ldevid_subject'] or '-'}",
        ]
        if result["dir"] and board["transcript"]:
            lines.append(f"  console: {board['transcript']} "
                         f"(pledgeforge board console-log --state {board['state_dir']})")
        if result["dir"] and board["files"]:
            lines.append(f"  files  : {Path(board['files']['idevid']).parent}/ "
                         f"({', '.join(Path(p).name for p in board['files'].values())})")
            lines.append("  check  : " + "\n           ".join(board["checks"]))
        if result["kept_running"]:
            lines.append(f"  attach : {board['attach']}")
            lines.append(f"  stop   : kill {board['pid']}")
        lines.append("")
    if result["kept_running"]:
        lines += ["Everything keeps running. Power-cycle a board with",
                  f"  pledgeforge board power cycle --state {result['dir']}/boards/<board>",
                  f"and stop the lab with: pledgeforge lab down --dir {result['lab']}"]
    elif result["dir"]:
        lines.append(f"Stopped the boards and the lab; their files are in {result['dir']} "
                     "(run with --keep to attach to the consoles).")
    else:
        lines.append("Stopped the boards and the lab and removed their temporary directory "
                     "(--dir D keeps the files, --keep leaves everything running).")
    return "\n".join(lines)
