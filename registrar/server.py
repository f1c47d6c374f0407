"""Run one server (MASA, cloud or owner registrar) from its configuration file until SIGTERM.

`pledgeforge masa serve` and `pledgeforge registrar serve` call `run`; the
lab starts `python -m pledgeforge.registrar.server --config FILE` as a
detached process, which is the same thing without the CLI around it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pledgeforge.errors import PledgeforgeError

from .config import MasaConfig, RegistrarConfig, load_config
from .web import serve

log = logging.getLogger("pledgeforge.registrar")


def _build(config: MasaConfig | RegistrarConfig, stop: asyncio.Event):
    if isinstance(config, MasaConfig):
        from .masa import Masa
        return Masa(config)
    if config.role == "cloud":
        from .cloud_registrar import CloudRegistrar
        return CloudRegistrar(config, stop)
    from .owner_registrar import OwnerRegistrar
    return OwnerRegistrar(config, stop)


async def _serve(config: MasaConfig | RegistrarConfig) -> None:
    stop = asyncio.Event()
    server = _build(config, stop)
    await serve(server.app(), config.server, server.ssl_context(), on_cleanup=server.close, stop=stop)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiohttp reports every TLS handshake a client abandons; BRSKI clients
    # that refuse our certificate do exactly that, which is no server error.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def run(config: MasaConfig | RegistrarConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        raise PledgeforgeError(f"{config.role} server: {exc.strerror or exc}") from None


def server_main(prog: str, load: Callable[[Path], Any], serve_config: Callable[[Any], None],
                argv: list[str] | None) -> int:
    """`python -m ... --config FILE` for a server process: its configuration loaded, served
    until stopped; a failure is logged and is one line on stderr, exit status 1."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        serve_config(load(args.config))
    except PledgeforgeError as exc:
        log.error("%s", exc)
        print(f"pledgeforge: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return server_main("python -m pledgeforge.registrar.server", load_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
