"""Micro-benchmarks of parsing and validation per payload size (pytest-benchmark).

    python -m pytest benchmarks/test_parsing.py --benchmark-only

Not part of the test suite (``testpaths`` is ``tests``): nothing here fails because a machine is
slow. Each size is measured on the path the endpoint takes (its body parser, which also checks
the encoding, surrogates and depth, then ``load_callback``), on the full marshmallow schema, which
the endpoint falls back to for payloads that need coercion, and against ``json.loads`` alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from marshmallow import fields
from pytest_benchmark.fixture import BenchmarkFixture

from flask_musiccallback.endpoint import parse_json_object
from flask_musiccallback.families.midi import (
    MIDI,
    InstrumentSchema,
    MidiDataSchema,
    MidiSchema,
    NoteSchema,
)
from flask_musiccallback.schemas import callback_schema, load_callback
from flask_musiccallback.simulate import build_callback

LYRICS = "\n".join(
    f"[Verse {n}]\nStreetlights hum a borrowed tune, the harbour holds its breath tonight"
    for n in range(400)
)


def long_lyrics() -> dict[str, Any]:
    payload = build_callback("complete", tracks=2)
    for track in payload["data"]["data"]:
        track["prompt"] = LYRICS
    return payload


PAYLOADS = {
    "2 tracks": build_callback("complete", tracks=2),
    "20 tracks": build_callback("complete", tracks=20),
    "long lyrics": long_lyrics(),
}


@pytest.mark.parametrize("size", list(PAYLOADS))
def test_parse_json_and_load(benchmark: BenchmarkFixture, size: str) -> None:
    body = json.dumps(PAYLOADS[size]).encode()
    benchmark.extra_info["bytes"] = len(body)
    event = benchmark(lambda: load_callback(parse_json_object(body)[0]))
    assert event.task_id


@pytest.mark.parametrize("size", list(PAYLOADS))
def test_full_schema_load(benchmark: BenchmarkFixture, size: str) -> None:
    body = json.dumps(PAYLOADS[size]).encode()
    benchmark.extra_info["bytes"] = len(body)
    event = benchmark(lambda: callback_schema.load(json.loads(body)))
    assert event.task_id


def midi_transcription(notes: int = 5000) -> dict[str, Any]:
    """A MIDI callback of ``notes`` notes over five instruments, start and end as the numbers and
    numeric strings real bodies mix."""
    note_list = [
        {"pitch": 40 + i % 40, "start": i * 0.05, "end": repr(i * 0.05 + 0.1), "velocity": 0.8}
        for i in range(notes // 5)
    ]
    instruments = [{"name": f"Instrument {k}", "notes": note_list} for k in range(5)]
    return {
        "code": 200,
        "msg": "success",
        "task_id": "midi-bench",
        "data": {"state": "complete", "instruments": instruments},
    }


def test_midi_5000_notes_load(benchmark: BenchmarkFixture) -> None:
    """The MIDI family's loader, whose loop reads well-formed notes without a schema per note."""
    body = midi_transcription()
    event = benchmark(lambda: MIDI.load(body))
    assert sum(len(instrument.notes) for instrument in event.instruments) == 5000


def test_midi_5000_notes_schema_per_note(benchmark: BenchmarkFixture) -> None:
    """What the loop is measured against: the same notes through a nested schema each."""

    class NestedInstrument(InstrumentSchema):
        notes = fields.List(fields.Nested(NoteSchema), load_default=None, allow_none=True)  # type: ignore[assignment]

    class NestedData(MidiDataSchema):
        instruments = fields.List(fields.Nested(NestedInstrument), load_default=None)

    class NestedMidi(MidiSchema):
        data = fields.Nested(NestedData, load_default=None, allow_none=True)

    nested = NestedMidi()
    body = midi_transcription()
    event = benchmark(lambda: nested.load(body))
    assert event.task_id == "midi-bench"


@pytest.mark.parametrize("size", list(PAYLOADS))
def test_json_parse_only(benchmark: BenchmarkFixture, size: str) -> None:
    body = json.dumps(PAYLOADS[size]).encode()
    benchmark(lambda: json.loads(body))
