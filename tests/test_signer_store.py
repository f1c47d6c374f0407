"""The signing service's state worker: group commits, and a flush only where one is needed.

A real SQLite file in WAL mode; what each transaction runs with is read back
from SQLite itself.
"""

from __future__ import annotations

import asyncio

from pledgeforge.keyserver.store import StateWorker, open_store


def _synchronous(conn) -> int:
    """SQLite's synchronous level for this transaction: 1 NORMAL (no flush at commit), 2 FULL."""
    return conn.exec_driver_sql("PRAGMA synchronous").scalar()


def test_a_transaction_flushes_the_disk_only_when_one_of_its_jobs_must_survive(tmp_path):
    async def scenario():
        worker = StateWorker(open_store(f"sqlite:///{tmp_path / 'state.sqlite'}"))
        worker.start()
        try:
            alone_light = await worker.run(_synchronous, durable=False)
            alone_durable = await worker.run(_synchronous)
            # Handed over together, they share one transaction: it must be durable.
            together = await asyncio.gather(worker.run(_synchronous, durable=False),
                                            worker.run(_synchronous))
            light_again = await worker.run(_synchronous, durable=False)
        finally:
            await worker.close()
        return alone_light, alone_durable, together, light_again

    alone_light, alone_durable, together, light_again = asyncio.run(scenario())
    assert (alone_light, alone_durable, light_again) == (1, 2, 1)
    assert together == [2, 2]
