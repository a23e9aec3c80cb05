"""Fault points: ``FLEETPULSE_FAULT=<name>`` makes the agent ``os._exit`` right there (tests).

A fault point stands where a crash is most dangerous for exactly-once delivery, so the
crash tests (and the later reliability issue) can kill the process at that instant
rather than hope a SIGKILL lands there. Names:

- ``after_reserve_before_write``: a batch's range is reserved in SQLite, no file yet;
- ``mid_rename``: the batch file is written, fsynced and renamed into the outbox, but
  its directory is not fsynced (the rename may not survive a power cut) and the
  ``exported`` mark is not committed;
- ``after_export_before_mark``: the batch file is renamed into the outbox and its
  directory fsynced, the ``exported`` mark is not committed;
- ``after_upload_before_mark``: central answered 201/200, ``uploaded`` is not committed;
- ``after_commit_before_ack``: ingest COMMITted a batch of messages, their PUBACKs are
  not sent yet (the broker redelivers them; the dedup key must store them once).

The process exits with status ``FAULT_EXIT`` and no cleanup, like a SIGKILL. The export
points fire in the export worker process (agent/worker.py), which inherits the variable:
the worker dies, the agent reports the crash and its next export run recovers.
"""

from __future__ import annotations

import logging
import os

FAULT_ENV = "FLEETPULSE_FAULT"
FAULT_EXIT = 86
FAULT_POINTS = frozenset(
    {
        "after_reserve_before_write",
        "mid_rename",
        "after_export_before_mark",
        "after_upload_before_mark",
        "after_commit_before_ack",
    }
)

log = logging.getLogger(__name__)


def fault_point(name: str) -> None:
    """Exit the process at once if ``$FLEETPULSE_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        log.critical("fault point %s reached: exiting with %d", name, FAULT_EXIT)
        logging.shutdown()
        os._exit(FAULT_EXIT)
