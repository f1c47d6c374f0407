"""How fast the manufacturing station provisions boards over paced consoles, one or a rack.

    .venv/bin/python benchmarks/provision_rack.py [--profile gateway-tpm] [--racks 1,4,8]

Starts a lab (for its manufacturer CA and TPM maker), then for each rack size
N starts N factory-new boards (`board run --factory-new --pace`: their
consoles move bytes at the profile's baud rate, as a UART does, and boot
without delays), waits until every one is in its manufacturing console, and
has the lab's station provision them all at once over their ptys. Prints per
rack size: boards per minute, the time per board, and where a board's time
went, as shares of it: TPM operations (the board's time on its TPM commands
beyond moving their bytes; on a PKCS#11 board, its token's), CA signing (the
station issuing the IDevID and IAK certificates) and serial transfer (the
bytes of the busier direction at the baud rate: the serial lower bound); then
the one-board time against its serial lower bound, and the rack speedup.

Goals, measured in the same run: one board within 2 times its serial lower
bound; 8 boards at least 4 times the one-board rate on a 2-core machine (a
board's time is mostly its line, so boards wait side by side). The last line
reads `rack speedup 8/1: X`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pledgeforge.bench import BoardProcess
from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import load_profile, write_profile
from pledgeforge.lab import Lab
from pledgeforge.station.provisioner import TPM_COMMANDS
from pledgeforge.station.rack import provision_rack

READY_TIMEOUT_S = 120.0


def wait_until_manufacturing(board: BoardProcess) -> None:
    """Until the board's power switch reports its manufacturing console (bounded)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while power_request(board.state_dir, "status", timeout=5)["phase"] != "manufacturing":
        if time.monotonic() > deadline:
            raise SystemExit(f"board {board.state_dir} never reached its manufacturing console")


def rack(lab: Lab, profile: Path, directory: Path, size: int, baudrate: int) -> dict:
    boards = [BoardProcess(profile, directory / f"board-{i}", "--factory-new", "--pace",
                           "--tpm-maker", str(lab.tpm_maker_dir)) for i in range(size)]
    with ThreadPoolExecutor(size) as pool:
        list(pool.map(lambda b: b.start(), boards))
    try:
        for board in boards:
            wait_until_manufacturing(board)
        station = lab.station()
        start = time.perf_counter()
        results = provision_rack(station, [b.console_path for b in boards])
        wall = time.perf_counter() - start
    finally:
        for board in boards:
            board.stop()
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} of {size} boards failed: {failed[0].error}")
    rate = baudrate / 10.0
    per_board = sum(r.seconds for r in results) / size
    return {
        "size": size, "wall": wall, "per_minute": size / wall * 60, "per_board": per_board,
        "bound": sum(max(r.bytes_out, r.bytes_in) for r in results) / size / rate,
        "bytes": sum(r.bytes_out + r.bytes_in for r in results) / size,
        "tpm": sum(r.board_seconds(TPM_COMMANDS, baudrate) for r in results) / size,
        "ca": sum(r.ca_seconds for r in results) / size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gateway-tpm", help="the boards' profile (a TPM one "
                                                                 "shows the TPM's share)")
    parser.add_argument("--racks", default="1,4,8", help="rack sizes, comma separated (1 and 8 "
                                                         "give the speedup)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.racks.split(",")]
    with tempfile.TemporaryDirectory(prefix="provision-rack-") as tmp:
        tmp = Path(tmp)
        lab, _ = Lab.up(tmp / "lab")
        try:
            loaded = load_profile(args.profile)
            baudrate = loaded.console.baud
            profile = write_profile(loaded.with_timings(autoboot_seconds=0, firmware_seconds=0),
                                    tmp / f"{loaded.name}-quick.toml").path
            rows = [rack(lab, profile, tmp / f"rack-{size}", size, baudrate) for size in sizes]
        finally:
            lab.down()

    # The key store's share: TPM operations on a TPM board, the token's work on a PKCS#11 one.
    store = "TPM" if loaded.keystore.type == "tpm" else "token"
    print(f"{args.profile} boards, consoles paced at {baudrate} baud")
    print(f"{'boards':>6} {'boards/min':>11} {'s/board':>8} {'lower bound s':>14} "
          f"{'/bound':>7} {store:>6} {'CA':>6} {'serial':>7}")
    for row in rows:
        share = lambda part: f"{part / row['per_board']:6.0%}"  # noqa: E731
        print(f"{row['size']:>6} {row['per_minute']:>11.1f} {row['per_board']:>8.2f} "
              f"{row['bound']:>14.2f} {row['per_board'] / row['bound']:>7.2f} {share(row['tpm'])} "
              f"{share(row['ca'])} {share(row['bound']):>7}")
    by_size = {row["size"]: row for row in rows}
    if 1 in by_size:
        one = by_size[1]
        print(f"one board: {one['per_board']:.2f} s, serial lower bound {one['bound']:.2f} s "
              f"({one['bytes']:.0f} bytes both ways at {baudrate} baud): "
              f"{one['per_board'] / one['bound']:.2f} x the bound (goal: at most 2)")
    if 1 in by_size and 8 in by_size:
        print(f"rack speedup 8/1: {by_size[8]['per_minute'] / by_size[1]['per_minute']:.2f}")


if __name__ == "__main__":
    main()
