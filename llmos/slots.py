"""Claiming a per-instance NATS user (a slot) when a worker or trainer starts.

The setup identity generates a fixed number of users for each slotted service
(`llmos.natsperms.SLOTTED`). A starting instance takes the first one no live process
holds: it locks `<dir>/<slot>.lock` for as long as it runs, and the kernel releases the
lock when it exits, however it exits, so a crashed worker's slot is free again at once.
Locks coordinate the processes of one machine (the dev stack, the tests); across
machines, give each instance its own user in `LLMOS_NATS_URL` (no slot is claimed then).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import Unavailable
from llmos.natsperms import slot_users


@dataclass
class Slot:
    """A claimed slot: its user name, held until `release` (or the process ends)."""

    user: str
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def claim_slot(directory: Path, service: str) -> Slot:
    """The first free slot of `service` whose credentials are in `directory`."""
    users = [u for u in slot_users(service) if (directory / f"{u}.json").exists()]
    for user in users:
        try:
            fd = os.open(directory / f"{user}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Unavailable(
                f"cannot claim a NATS user of {service} in {directory} ({exc.strerror}): "
                "give this instance its own user in LLMOS_NATS_URL instead"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(user, fd)
    raise Unavailable(
        f"every NATS user of {service} in {directory} is in use ({len(users)}); "
        "the setup identity generates more (`start_nats(slots=...)`)"
    )
