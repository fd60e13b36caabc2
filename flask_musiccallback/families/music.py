"""The music generation family: generate, extend, covers, instrumental and vocal additions.

The first member of every extension's :class:`~.base.Families`, registered first so that it reads
whatever no later family claims; its stages are keyed bare, as stores kept them before families.
"""

from __future__ import annotations

from types import MappingProxyType

from ..events import Stage
from ..schemas import callback_schema, load_callback
from ..signals import all_tracks_generated, first_track_generated, task_failed, text_generated
from .base import Family

MUSIC_NAME = "music"

MUSIC = Family(
    name=MUSIC_NAME,
    schema=callback_schema,
    load=load_callback,
    signals=MappingProxyType(
        {
            Stage.TEXT: text_generated,
            Stage.FIRST: first_track_generated,
            Stage.COMPLETE: all_tracks_generated,
            Stage.FAILED: task_failed,
        }
    ),
    superseded_by=MappingProxyType({Stage.TEXT: Stage.COMPLETE, Stage.FIRST: Stage.COMPLETE}),
    bare_keys=True,
)
