"""flask-musiccallback: receive the music generation API's callbacks in Flask."""

from .config import ConfigKeys, ConfigurationError
from .dispatch import Outcome
from .events import CallbackEvent, FamilyEvent, Stage, Track
from .extension import MusicCallback, MusicCallbackInsecureWarning
from .families import Family, WavEvent
from .signals import (
    all_tracks_generated,
    callback_duplicate,
    callback_received,
    callback_rejected,
    callback_unreadable,
    first_track_generated,
    receiver_failed,
    task_failed,
    text_generated,
    wav_converted,
    wav_failed,
)
from .stores.base import (
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    PersistentStore,
    Store,
    StoreError,
    StoreUnavailable,
)
from .stores.memory import MemoryStore
from .stores.registry import register_store

__all__ = [
    "CallbackEvent",
    "ClaimResult",
    "ConfigKeys",
    "ConfigurationError",
    "Delivery",
    "DeliveryState",
    "Family",
    "FamilyEvent",
    "KeptDelivery",
    "MemoryStore",
    "MusicCallback",
    "MusicCallbackInsecureWarning",
    "Outcome",
    "PersistentStore",
    "Stage",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Track",
    "WavEvent",
    "all_tracks_generated",
    "callback_duplicate",
    "callback_received",
    "callback_rejected",
    "callback_unreadable",
    "first_track_generated",
    "receiver_failed",
    "register_store",
    "task_failed",
    "text_generated",
    "wav_converted",
    "wav_failed",
]
__version__ = "0.1.0"
