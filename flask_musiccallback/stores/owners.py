"""Who holds a claim, and whether that process still runs.

A claim's owner is ``hostname:pid/token``: the process, so that a claim abandoned by a process
that died can be taken over at once instead of after its lease, and a token of the claim's own, so
that a step retried after a lost answer knows its own work. Kept apart from the store contract
(:mod:`.base`): reading ``/proc`` is this machine's business, not a store's.
"""

from __future__ import annotations

import os
import secrets
import socket

_HOSTNAME = socket.gethostname()


def process_owner() -> str:
    """``hostname:pid``: the process part of a claim's owner.

    Read on every claim, not cached: a worker forked after import has its own pid.
    """
    return f"{_HOSTNAME}:{os.getpid()}"


def claim_owner() -> str:
    """A new owner for a claim: ``hostname:pid/token``.

    The process tells whether a claim was abandoned by a process that died (:func:`owner_is_dead`);
    the token tells this claim from every other one of the same process, so that a step retried
    after a lost answer knows its own work.
    """
    return f"{process_owner()}/{secrets.token_hex(8)}"


def owner_process(owner: str | None) -> str:
    """The ``hostname:pid`` of a claim's owner."""
    return (owner or "").partition("/")[0]


def owner_is_dead(owner: str | None) -> bool:
    """Whether ``owner`` names a process of this machine that no longer runs.

    Only this machine's processes can be checked; a claim held elsewhere waits for its lease.
    """
    if not owner:
        return False
    host, _, pid_text = owner_process(owner).rpartition(":")
    if host != _HOSTNAME or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped: dead, though signals still reach it.

    A killed worker stays a zombie until its parent, or an init process, reaps it; in a container
    whose first process reaps nothing, that is for ever. Known on Linux (``/proc``) only.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (command) state ...": the command may hold spaces and parentheses.
            return stat.read().rpartition(b")")[2].split()[:1] == [b"Z"]
    except OSError:
        return False
