"""Callback families: one module each, on the seam of :mod:`.base` (docs/families.md)."""

from .base import Event, Families, Family, find_task_id
from .music import MUSIC, MUSIC_NAME

__all__ = ["MUSIC", "MUSIC_NAME", "Event", "Families", "Family", "find_task_id"]
