"""The life of a delivery after the endpoint or a poll accepted it.

- :mod:`.job`: a claimed delivery as a :class:`Job`, and every state it goes through;
- :mod:`.receivers`: running the receivers, every one, whatever one raises;
- :mod:`.dispatchers`: where jobs run, in the request or in a pool (:mod:`.celery`: in a
  Celery worker);
- :mod:`.replay` and :mod:`.sweep`: kept deliveries dispatched again, by hand or on their own.
"""

from .dispatchers import Dispatcher, SyncDispatcher, ThreadDispatcher, dispatcher_for
from .job import Job, NextAttempt, NotQueued, Outcome, deliver, process, process_acknowledged
from .receivers import describe, receiver_name, run_receivers, send_isolated

__all__ = [
    "Dispatcher",
    "Job",
    "NextAttempt",
    "NotQueued",
    "Outcome",
    "SyncDispatcher",
    "ThreadDispatcher",
    "deliver",
    "describe",
    "dispatcher_for",
    "process",
    "process_acknowledged",
    "receiver_name",
    "run_receivers",
    "send_isolated",
]
