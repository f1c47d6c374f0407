"""What the console transcript costs the board's console, and whether the writer keeps up.

    .venv/bin/python benchmarks/console_transcript.py --lines 100000

Prints, in one run: the board's console output rate (`Console.print` of
typical console lines to one attached client) without a transcript, with a
transcript on a normal file, and with a transcript whose file is a FIFO
nobody reads (a disk that has stopped), as lines/s and as ratios to the
first; then how long the writer took to have everything on disk.

Goals: the console keeps at least 0.2 x its bare rate with a transcript (the
rendering thread shares the interpreter with the board), the rate with a
stopped disk is no lower than with a working one (nothing waits for the
disk), and the writer has everything on disk within a second of the last of
100k lines. A real UART at 115200 baud carries about 1500 such lines/s, far
below any of these rates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from pledgeforge.boards.console import Console
from pledgeforge.boards.transcript import TranscriptRecorder


def console_rate(lines: int, tap) -> float:
    console = Console(tap=tap)
    console.attach(lambda data: None)
    start = time.perf_counter()
    for n in range(lines):
        console.print(f"[{n:08d}] <inf> app: a console line of a typical length for a board")
    return lines / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bare = console_rate(args.lines, None)

        recorder = TranscriptRecorder(Path(tmp) / "console.log", file_bytes=1 << 20, files=4)
        recorded = console_rate(args.lines, recorder.record)
        start = time.perf_counter()
        flushed = recorder.flush(60)
        catch_up = time.perf_counter() - start
        recorder.close(10)

        fifo = Path(tmp) / "stalled" / "console.log"
        fifo.parent.mkdir()
        os.mkfifo(fifo)
        stalled_recorder = TranscriptRecorder(fifo, file_bytes=1 << 20, files=4)
        stalled = console_rate(args.lines, stalled_recorder.record)
        # Let the writer go: open the FIFO for reading and throw the bytes away.
        drain = threading.Thread(target=lambda: open(fifo, "rb").read(), daemon=True)
        drain.start()
        stalled_recorder.close(10)

    print(f"console lines/s, bare:                 {bare:12,.0f}")
    print(f"  with a transcript:                   {recorded:12,.0f}  ({recorded / bare:.2f} x bare)")
    print(f"  with a transcript on a stopped disk: {stalled:12,.0f}  ({stalled / bare:.2f} x bare)")
    print(f"writer on disk {catch_up:.2f} s after the last line (flushed: {flushed})")


if __name__ == "__main__":
    main()
