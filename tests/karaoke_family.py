"""What a module adding a callback family of a host's own would hold: a karaoke family (not one
of the provider's), reduced.

Shared by the family tests and the Celery host, whose worker must read it by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from blinker import Namespace
from marshmallow import EXCLUDE, Schema, fields, post_load

from flask_musiccallback.families import Family

karaoke_signals = Namespace()
karaoke_ready = karaoke_signals.signal("karaoke-ready")
karaoke_failed = karaoke_signals.signal("karaoke-failed")


@dataclass(frozen=True)
class KaraokeEvent:
    task_id: str
    stage: str
    code: int
    karaoke_url: str | None
    received_at: datetime


class KaraokeDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    task_id = fields.String(required=True)
    karaokeUrl = fields.String(allow_none=True, load_default=None)  # noqa: N815


class KaraokeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True)
    data = fields.Nested(KaraokeDataSchema, required=True)

    @post_load
    def make_event(self, loaded: dict[str, Any], **kwargs: Any) -> KaraokeEvent:
        ok = loaded["code"] == 200 and loaded["data"]["karaokeUrl"]
        return KaraokeEvent(
            task_id=loaded["data"]["task_id"],
            stage="complete" if ok else "failed",
            code=loaded["code"],
            karaoke_url=loaded["data"]["karaokeUrl"],
            received_at=datetime.now(timezone.utc),
        )


def is_karaoke(payload: Mapping[str, Any]) -> bool:
    data = payload.get("data")
    return isinstance(data, dict) and "karaokeUrl" in data


karaoke_schema = KaraokeSchema()
KARAOKE = Family(
    name="karaoke",
    schema=karaoke_schema,
    load=karaoke_schema.load,
    signals={"complete": karaoke_ready, "failed": karaoke_failed},
    detect=is_karaoke,
)


def karaoke_payload(task_id: str, url: str | None = "https://x/karaoke.mp4") -> dict[str, Any]:
    return {
        "code": 200 if url else 400,
        "msg": "ok",
        "data": {"task_id": task_id, "karaokeUrl": url},
    }
