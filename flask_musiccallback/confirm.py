"""Verify by fetch: a callback confirmed against the provider's record of its task before it is
dispatched (``MUSICCALLBACK_VERIFY_BY_FETCH``; docs/security.md).

kie.ai's signature does not cover the body, and sunoapi.org signs nothing, so a body can claim
what the provider never said. The provider's record endpoint, asked with the host's API key, is a
second source the caller cannot forge (dj-stripe's "retrieve the event from the API"). The
record is read with the family's own ``read_record``, as a poll reads it, and loaded into the
event it stands for; the callback is confirmed when that event is

- the same stage, or a later success of the family (a record ``SUCCESS`` confirms a music
  ``first``): a failure is confirmed by a failed record only, and a record still pending
  confirms nothing, since the callback claims what the provider has not recorded;
- for a success, carrying every link and result id the callback carries (:func:`results`): the
  set of track ids and their links for music, the link for WAV and video, the images of a cover.
  The callback may carry fewer than the record (a ``first`` has one track's audio), never one
  the record lacks: that is how a stranger's audio would come in.

The provider's answer is awaited at most :data:`TIMEOUT`, well under the 15 s the provider waits
for ours. A provider that cannot be asked confirms nothing either way; the endpoint answers 503,
so that the provider delivers again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import httpx

from .config import Settings
from .families import Event, Family
from .families.base import FAILED
from .poll import fetch_record
from .provider import ProviderClient
from .verify import Refusal, Rejected

logger = logging.getLogger("flask_musiccallback")

#: How long a confirmation waits for the provider: a callback's whole answer must stay well
#: within the 15 s the provider waits (10 s on some of its pages).
TIMEOUT = httpx.Timeout(5.0, connect=2.0)

#: The keys whose values are result ids (a music track's, a stem's); links are found by value.
ID_KEYS = frozenset({"id", "audioId", "audio_id", "voiceId", "voice_id"})


def confirm(settings: Settings, family: Family, event: Event, payload: Mapping[str, Any]) -> None:
    """Raise :class:`~.verify.Rejected` (``unverified``) when the provider's record of the task
    contradicts the callback, and :class:`~.provider.PollError` when the record cannot be had.

    A family without a record endpoint (a host's own, not pollable) cannot be confirmed: its
    callbacks pass unconfirmed.
    """
    if family.record_path is None or family.read_record is None:
        return
    with ProviderClient.from_settings(settings, timeout=TIMEOUT) as client:
        record, recorded = fetch_record(family, event.task_id, client)
    if recorded is None or record.body is None:
        _unverified(event, f"the record is still {record.status}")
    if not _stands_for(family, str(event.stage), str(recorded.stage)):
        _unverified(event, f"the record is {record.status} ({recorded.stage})")
    if str(event.stage) != FAILED:
        unknown = results(payload) - results(record.body)
        if unknown:
            _unverified(event, f"the record has none of {sorted(unknown)}")


def _stands_for(family: Family, claimed: str, recorded: str) -> bool:
    """Whether a record at stage ``recorded`` confirms a callback of stage ``claimed``: the same
    stage, or a later success (the family's stages list its successes in order)."""
    if claimed == recorded:
        return True
    stages = family.stages
    if FAILED in (claimed, recorded) or claimed not in stages or recorded not in stages:
        return False
    return stages.index(recorded) > stages.index(claimed)


def results(body: Mapping[str, Any]) -> frozenset[str]:
    """The links (``http(s)://`` values, wherever they are) and result ids of a body: what a
    forged success would change, whatever the family and however a key is spelled."""
    return frozenset(_results(body, None))


def _results(value: Any, key: str | None) -> Iterator[str]:
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _results(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _results(item, key)
    elif isinstance(value, str) and (key in ID_KEYS or value.startswith(("https://", "http://"))):
        yield value


def _unverified(event: Event, why: str) -> NoReturn:
    logger.warning(
        "Refused a %s callback of task %s: the provider's record does not confirm it (%s).",
        event.stage,
        event.task_id,
        why,
    )
    raise Rejected(Refusal.UNVERIFIED)
