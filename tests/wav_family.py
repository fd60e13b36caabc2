"""What a module adding a callback family would hold: the WAV conversion family, reduced.

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

wav_signals = Namespace()
wav_ready = wav_signals.signal("wav-ready")
wav_failed = wav_signals.signal("wav-failed")


@dataclass(frozen=True)
class WavEvent:
    task_id: str
    stage: str
    code: int
    wav_url: str | None
    received_at: datetime


class WavDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    task_id = fields.String(required=True)
    audioWavUrl = fields.String(allow_none=True, load_default=None)  # noqa: N815


class WavSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True)
    data = fields.Nested(WavDataSchema, required=True)

    @post_load
    def make_event(self, loaded: dict[str, Any], **kwargs: Any) -> WavEvent:
        ok = loaded["code"] == 200 and loaded["data"]["audioWavUrl"]
        return WavEvent(
            task_id=loaded["data"]["task_id"],
            stage="complete" if ok else "failed",
            code=loaded["code"],
            wav_url=loaded["data"]["audioWavUrl"],
            received_at=datetime.now(timezone.utc),
        )


def is_wav(payload: Mapping[str, Any]) -> bool:
    data = payload.get("data")
    return isinstance(data, dict) and "audioWavUrl" in data


wav_schema = WavSchema()
WAV = Family(
    name="wav",
    schema=wav_schema,
    load=wav_schema.load,
    signals={"complete": wav_ready, "failed": wav_failed},
    detect=is_wav,
)


def wav_payload(task_id: str, url: str | None = "https://x/a.wav") -> dict[str, Any]:
    return {
        "code": 200 if url else 400,
        "msg": "ok",
        "data": {"task_id": task_id, "audioWavUrl": url},
    }
