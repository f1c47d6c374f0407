"""The BusyBox subset of a Linux-like board: commands over its file system.

These are what lab tools run on a target, besides what people type:
labgrid's ShellDriver uploads with `mktemp`, `which rx`, `rx FILE` (XMODEM),
`dd if=... of=... bs=1 count=N` and `rm -f`, downloads with `stat FILE` and
`sz -X FILE`, and runs scripts after `chmod +x`; people move small files with
`cat`, `base64`, `base64 -d` and redirections. Output and messages follow
BusyBox's, so scripts written against a real board read them the same way.

The board registers these commands only when its profile gives it a file
system (`[flash] files_kib`); a microcontroller profile has none.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import os
import posixpath
import re
import secrets
import stat as stat_module

import xmodem

from .filesystem import TMP_DIR
from .shell import CommandContext, CommandError, CommandRegistry

FILE_COMMANDS = CommandRegistry()
command = FILE_COMMANDS.command

# XMODEM: how long the peer may stay silent, and how often a block is retried.
XMODEM_TIMEOUT_S = 5
XMODEM_RETRIES = 10
_MKTEMP_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _options(ctx: CommandContext, args: list[str], flags: str, valued: str = "") -> tuple[dict, list[str]]:
    """getopt-style options: `-rf`, `-w 0`, `-w0`, `--` ends them."""
    found: dict[str, str | bool] = {}
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        arg = rest.pop(0)
        if arg == "--":
            break
        i = 1
        while i < len(arg):
            letter = arg[i]
            if letter in valued:
                value = arg[i + 1:] or (rest.pop(0) if rest else None)
                if value is None:
                    raise CommandError(f"option requires an argument -- '{letter}'")
                found[letter] = value
                break
            if letter not in flags:
                raise CommandError(f"unrecognized option '{arg}'; usage: "
                                   f"{ctx.shell.registry.get(ctx.name).usage}")
            found[letter] = True
            i += 1
    return found, rest


def _input(ctx: CommandContext, name: str | None) -> bytes:
    """A file's contents, or standard input for no name or `-`."""
    if name is None or name == "-":
        return ctx.read_input()
    return ctx.files.read(ctx.path(name))


@command("cat", "print files (or standard input) one after the other", "cat [FILE...]")
def _cat(ctx: CommandContext, args: list[str]) -> int:
    status = 0
    for name in args or [None]:
        try:
            ctx.write(_input(ctx, name))
        except OSError as exc:
            status = ctx.error(f"{name}: {exc.strerror}")
    return status


@command("base64", "encode to base64, or decode with -d", "base64 [-d] [-w COLS] [FILE]")
def _base64(ctx: CommandContext, args: list[str]) -> int:
    opts, names = _options(ctx, args, "d", "w")
    if len(names) > 1:
        return ctx.error("usage: base64 [-d] [-w COLS] [FILE]")
    data = _input(ctx, names[0] if names else None)
    if opts.get("d"):
        text = re.sub(rb"\s+", b"", data)
        try:
            ctx.write(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            return ctx.error("invalid input")
        return 0
    width = opts.get("w", "76")
    if not (str(width).isascii() and str(width).isdigit()):
        return ctx.error(f"invalid number '{width}'")
    encoded = base64.b64encode(data)
    width = int(width)
    if width:
        encoded = b"\n".join(encoded[i:i + width] for i in range(0, len(encoded), width))
    ctx.write(encoded + (b"\n" if encoded and width else b""))
    return 0


@command("rm", "remove files", "rm [-f] [-r] FILE...")
def _rm(ctx: CommandContext, args: list[str]) -> int:
    opts, names = _options(ctx, args, "frR")
    if not names and not opts.get("f"):
        return ctx.error("usage: rm [-f] [-r] FILE...")
    status = 0
    for name in names:
        try:
            ctx.files.remove(ctx.path(name))
        except OSError as exc:
            if not (opts.get("f") and exc.errno == errno.ENOENT):
                status = ctx.error(f"can't remove '{name}': {exc.strerror}")
    return status


@command("mktemp", "create an empty temporary file and print its name",
         "mktemp [-p DIR] [-t] [TEMPLATE]")
def _mktemp(ctx: CommandContext, args: list[str]) -> int:
    opts, names = _options(ctx, args, "tqu", "p")
    if len(names) > 1:
        return ctx.error("usage: mktemp [-p DIR] [-t] [TEMPLATE]")
    template = names[0] if names else "tmp.XXXXXXXXXX"
    stem = template.rstrip("X")
    randomised = len(template) - len(stem)
    if randomised < 3:
        return ctx.error(f"too few X's in template '{template}'")
    if "p" in opts or opts.get("t") or not names:
        directory = opts.get("p") or ctx.shell.vars.get("TMPDIR") or TMP_DIR
        stem = posixpath.join(directory, stem)
    for _ in range(100):
        path = ctx.path(stem + "".join(secrets.choice(_MKTEMP_CHARS) for _ in range(randomised)))
        if ctx.files.create(path, 0o600):
            ctx.print(path)
            return 0
    return ctx.error(f"failed to create a file from template '{template}'")


@command("touch", "create empty files", "touch FILE...")
def _touch(ctx: CommandContext, args: list[str]) -> int:
    _, names = _options(ctx, args, "c")
    if not names:
        return ctx.error("usage: touch FILE...")
    for name in names:
        ctx.files.create(ctx.path(name))
    return 0


def _mode_text(is_dir: bool, mode: int) -> str:
    return stat_module.filemode((stat_module.S_IFDIR if is_dir else stat_module.S_IFREG) | mode)


@command("ls", "list a directory or files", "ls [-l] [-a] [PATH...]")
def _ls(ctx: CommandContext, args: list[str]) -> int:
    opts, names = _options(ctx, args, "la1")
    status = 0
    names = names or ["."]
    for index, name in enumerate(names):
        path = ctx.path(name)
        if len(names) > 1 and ctx.files.is_dir(path):
            ctx.print(("\n" if index else "") + f"{name}:")
        try:
            entries = [posixpath.join(path, e) for e in ctx.files.listdir(path)] \
                if ctx.files.is_dir(path) else [path]
            for entry in entries:
                shown = posixpath.basename(entry) if ctx.files.is_dir(path) else name
                if opts.get("l"):
                    info = ctx.files.stat(entry)
                    ctx.print(f"{_mode_text(info.is_dir, info.mode)}    1 root     root     "
                              f"{info.size:>9} {shown}")
                else:
                    ctx.print(shown)
        except OSError as exc:
            status = ctx.error(f"{name}: {exc.strerror}")
    return status


@command("stat", "show a file's size and mode", "stat FILE...")
def _stat(ctx: CommandContext, args: list[str]) -> int:
    _, names = _options(ctx, args, "")
    if not names:
        return ctx.error("usage: stat FILE...")
    status = 0
    for name in names:
        try:
            info = ctx.files.stat(ctx.path(name))
        except OSError as exc:
            status = ctx.error(f"can't stat '{name}': {exc.strerror}")
            continue
        kind = "directory" if info.is_dir else "regular file" if info.size else "regular empty file"
        ctx.print(f"  File: {name}")
        ctx.print(f"  Size: {info.size:<10}\tBlocks: {(info.size + 511) // 512:<10} IO Block: 4096   {kind}")
        ctx.print(f"Access: ({info.mode:04o}/{_mode_text(info.is_dir, info.mode)})  "
                  f"Uid: (    0/    root)   Gid: (    0/    root)")
    return status


_SYMBOLIC_MODE = re.compile(r"([ugoa]*)([+=-])([rwx]*)")


def _new_mode(text: str, mode: int) -> int | None:
    """chmod's MODE (octal, or symbolic clauses such as +x, u+rw,go-w) applied to `mode`."""
    if re.fullmatch(r"[0-7]{1,4}", text):
        return int(text, 8)
    for clause in text.split(","):
        match = _SYMBOLIC_MODE.fullmatch(clause)
        if match is None:
            return None
        who, op, perms = match.groups()
        shifts = {"u": (6,), "g": (3,), "o": (0,), "a": (6, 3, 0)}
        targets = sorted({s for w in (who or "a") for s in shifts[w]})
        bits = sum({"r": 4, "w": 2, "x": 1}[p] << s for p in set(perms) for s in targets)
        if op == "+":
            mode |= bits
        elif op == "-":
            mode &= ~bits
        else:
            mode = (mode & ~sum(7 << s for s in targets)) | bits
    return mode


@command("chmod", "change a file's mode (chmod +x makes a script runnable)", "chmod MODE FILE...")
def _chmod(ctx: CommandContext, args: list[str]) -> int:
    if len(args) < 2:
        return ctx.error("usage: chmod MODE FILE...")
    status = 0
    for name in args[1:]:
        path = ctx.path(name)
        try:
            mode = _new_mode(args[0], ctx.files.stat(path).mode)
            if mode is None:
                return ctx.error(f"invalid mode '{args[0]}'")
            ctx.files.chmod(path, mode)
        except OSError as exc:
            status = ctx.error(f"{name}: {exc.strerror}")
    return status


_SIZE_SUFFIXES = {"": 1, "c": 1, "w": 2, "b": 512, "k": 1024, "K": 1024, "kB": 1000, "M": 1024 ** 2,
                  "MB": 1000 ** 2}


def _dd_number(key: str, text: str) -> int:
    match = re.fullmatch(r"(\d{1,12})([a-zA-Z]{0,2})", text)
    if match is None or match.group(2) not in _SIZE_SUFFIXES:
        raise CommandError(f"invalid number '{text}' for {key}=")
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2)]


@command("dd", "copy a file, or part of it", "dd [if=FILE] [of=FILE] [bs=N] [count=N] [skip=N]")
def _dd(ctx: CommandContext, args: list[str]) -> int:
    operands = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("if", "of", "bs", "count", "skip", "status", "conv"):
            return ctx.error(f"unknown operand {arg}; usage: dd [if=FILE] [of=FILE] [bs=N] [count=N] [skip=N]")
        operands[key] = value
    if operands.get("conv") not in (None, "fsync", "fdatasync", "sync"):
        return ctx.error(f"conv={operands['conv']} is not supported on this board")
    block = _dd_number("bs", operands.get("bs", "512")) or 1
    data = _input(ctx, operands.get("if"))
    data = data[_dd_number("skip", operands["skip"]) * block:] if "skip" in operands else data
    if "count" in operands:
        data = data[:_dd_number("count", operands["count"]) * block]
    if "of" in operands:
        ctx.files.write(ctx.path(operands["of"]), data)
    else:
        ctx.write(data)
    if operands.get("status") != "none":
        whole, part = divmod(len(data), block)
        records = f"{whole}+{1 if part else 0}"
        ctx.io.stderr.write(f"{records} records in\n{records} records out\n".encode())
    return 0


@command("df", "file-system space: total, used and free, in KiB", "df")
def _df(ctx: CommandContext, args: list[str]) -> int:
    ctx.print(f"{'Filesystem':<20} {'1K-blocks':>9} {'Used':>9} {'Available':>9} Use% Mounted on")
    for partition, mount in ctx.files.partitions():
        total, used = partition.capacity // 1024, (partition.used + 1023) // 1024
        share = (100 * partition.used + partition.capacity - 1) // partition.capacity
        ctx.print(f"{partition.name:<20} {total:>9} {used:>9} {max(total - used, 0):>9} {share:>3}% {mount}")
    return 0


@command("sync", "flush file writes (each write already reaches the flash before it returns)")
def _sync(ctx: CommandContext, args: list[str]) -> int:
    return 0


@command("which", "show where a command is", "which NAME...")
def _which(ctx: CommandContext, args: list[str]) -> int:
    status = 0
    for name in args:
        if "/" in name:
            path = ctx.path(name)
            try:
                found = ctx.files.stat(path).mode & 0o111 and not ctx.files.is_dir(path)
            except OSError:
                found = False
            if found:
                ctx.print(name)
                continue
        elif ctx.shell.registry.get(name) is not None:
            ctx.print(f"/bin/{name}")
            continue
        status = 1
    return status if args else 1


# -- XMODEM over the console ---------------------------------------------------------

class _Bounded(io.RawIOBase):
    """What rx receives, refused beyond what the file system could hold."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(self.data) + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += data
        return len(data)


def _modem(ctx: CommandContext) -> xmodem.XMODEM:
    console = ctx.serial()

    def getc(size: int, timeout: float = 1):
        return console.read_raw(size, timeout) or None

    def putc(data: bytes, timeout: float = 1) -> int:
        console.write(data)
        return len(data)

    return xmodem.XMODEM(getc, putc)


@command("rx", "receive a file over the console with XMODEM (what the sender's `sx` sends)", "rx FILE")
def _rx(ctx: CommandContext, args: list[str]) -> int:
    if len(args) != 1:
        return ctx.error("usage: rx FILE")
    path = ctx.path(args[0])
    ctx.files.check_writable(path)
    modem = _modem(ctx)
    received = _Bounded(ctx.files.partition_of(path).capacity)
    try:
        size = modem.recv(received, crc_mode=1, retry=XMODEM_RETRIES, timeout=XMODEM_TIMEOUT_S, quiet=True)
    except OSError:
        modem.abort(count=3, timeout=1)
        raise
    if size is None:
        return ctx.error("transfer failed")
    # As BusyBox rx does, the file gets every block, padding included.
    ctx.files.write(path, bytes(received.data))
    return 0


@command("sz", "send a file over the console with XMODEM (-X)", "sz -X [-b] [-m N] [-M N] FILE")
def _sz(ctx: CommandContext, args: list[str]) -> int:
    opts, names = _options(ctx, args, "bXq", "mM")
    if not opts.get("X"):
        return ctx.error("only XMODEM transfers (-X) are supported on this board")
    if len(names) != 1:
        return ctx.error("usage: sz -X [-b] [-m N] [-M N] FILE")
    data = ctx.files.read(ctx.path(names[0]))
    sent = _modem(ctx).send(io.BytesIO(data), retry=XMODEM_RETRIES, timeout=XMODEM_TIMEOUT_S, quiet=True)
    return 0 if sent else ctx.error("transfer failed")
