"""Run the signing service from its configuration file until SIGTERM.

`pledgeforge signer serve --config FILE` calls `run`; the lab starts
`python -m pledgeforge.keyserver.server --config FILE` as a detached process,
which is the same without the CLI. SIGHUP reloads the policy (clients and
delegations), as a change of the file does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from pledgeforge.errors import EnvironmentFailure
from pledgeforge.registrar.server import server_main
from pledgeforge.registrar.web import listening_socket

from .config import SignerConfig, load_signer_config
from .service import SigningService
from .tls_accept import TlsHandshake

log = logging.getLogger("pledgeforge.keyserver")

#: how long a Python thread may run before another one waiting for the GIL gets it
SWITCH_INTERVAL_S = 0.0005


async def serve(config: SignerConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then finish requests in flight (bounded)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # The threads that wait on the signing workers and on the database need the GIL back
    # as soon as their answer is in, not after the event loop's next 5 ms of building:
    # otherwise a worker sits idle while its next batch waits for a thread to be scheduled.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    service = SigningService(config)
    try:
        context = service.ssl_context()
        sock = listening_socket(config.server.host, config.server.port, backlog=512)
    except BaseException:
        service.close_keys()
        raise
    await service.start()
    runner = web.AppRunner(service.app(), handle_signals=False, access_log=None,
                           shutdown_timeout=config.server.shutdown_timeout_s)
    await runner.setup()
    # What is loaded by now (aiohttp, SQLAlchemy, cryptography: some 70,000 objects) lives as
    # long as the process. Frozen, it is left out of the collector's full passes, which a
    # stream of batches sets off every few seconds and which walked all of it (about 30 ms).
    gc.freeze()
    listener = None
    signals = (signal.SIGTERM, signal.SIGINT)
    try:
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, service.reload_policy, "SIGHUP")
        listener = await loop.create_server(
            lambda: TlsHandshake(runner.server, context, service.on_tls_refused), sock=sock)
        log.info("signer %s listening on https://%s:%d", config.node, config.server.host,
                 sock.getsockname()[1])
        await stop.wait()
        log.info("signer %s shutting down", config.node)
    finally:
        if listener is not None:
            listener.close()
        await runner.cleanup()
        await service.close()
        for signum in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def run(config: SignerConfig) -> None:
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        raise EnvironmentFailure(f"signing service: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    return server_main("python -m pledgeforge.keyserver.server", load_signer_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
