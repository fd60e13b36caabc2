"""The MIDI family: transcriptions in both resellers' spellings reach ``midi_generated`` and
``midi_failed`` only, with typed notes read fast from thousands, and their record reads as their
callback."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError, fields

from flask_musiccallback import Instrument, MidiEvent, Note
from flask_musiccallback.families import MIDI
from flask_musiccallback.families.midi import (
    InstrumentSchema,
    MidiDataSchema,
    MidiSchema,
    NoteSchema,
    quick_notes,
)
from flask_musiccallback.testing import build_callback

from .conftest import AppFactory
from .family_kit import (
    OPEN_URL,
    RECORD_TIMES,
    assert_never_a_server_error,
    assert_refused,
    loads_or_refuses,
    post,
    record_answer,
)
from .payloads import json_values, mutated

RESELLERS = ("sunoapi", "kie")

NOTE = {"pitch": 73, "start": "0.036458333333333336", "end": 0.18229166666666666, "velocity": 1}
INSTRUMENTS = [{"name": "Drums", "notes": [NOTE]}]


def midi_body(data: Any, *, code: int = 200, **top: Any) -> dict[str, Any]:
    return {"code": code, "msg": "success", **top, "data": data}


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_transcription_fires_midi_generated_once_with_typed_notes(
    app: Flask, reseller: str
) -> None:
    body = build_callback("complete", family="midi", reseller=reseller, task_id="m1", tracks=2)
    posted = post(app, body)
    assert posted.answer == {"status": "received"}
    assert posted.names == ["callback_received", "midi_generated"]
    [event] = posted.events("midi_generated")
    assert isinstance(event, MidiEvent)
    assert (event.family, event.task_id, event.stage, event.code, event.ok, event.state) == (
        "midi",
        "m1",
        "complete",
        200,
        True,
        "complete",
    )
    assert [instrument.name for instrument in event.instruments] == [
        "Drums",
        "Electric Bass (finger)",
    ]
    for instrument in event.instruments:
        assert isinstance(instrument, Instrument)
        assert instrument.notes
        for note in instrument.notes:
            assert isinstance(note, Note)
            assert type(note.pitch) is int
            assert all(type(value) is float for value in (note.start, note.end, note.velocity))


@pytest.mark.parametrize(
    "body",
    [
        midi_body({"state": "complete", "instruments": INSTRUMENTS}, task_id="m2"),
        midi_body({"state": "complete", "taskId": "m2", "instruments": INSTRUMENTS}),
        midi_body({"state": "complete", "task_id": "m2", "instruments": INSTRUMENTS}),
    ],
    ids=["top-level task_id", "data.taskId", "data.task_id"],
)
def test_the_task_id_is_read_wherever_a_reseller_puts_it(app: Flask, body: dict[str, Any]) -> None:
    [event] = post(app, body).events("midi_generated")
    assert event.task_id == "m2"
    assert event.instruments == (
        Instrument("Drums", (Note(73, 0.036458333333333336, 0.18229166666666666, 1.0),)),
    )


def test_times_as_numbers_or_numeric_text_load_alike() -> None:
    as_text = {"pitch": 60, "start": "0.5", "end": "0.75", "velocity": "0.8"}
    as_numbers = {"pitch": 60, "start": 0.5, "end": 0.75, "velocity": 0.8}
    loaded = [
        MIDI.load(midi_body({"instruments": [{"name": "P", "notes": [note]}]}, task_id="m3"))
        for note in (as_text, as_numbers)
    ]
    assert loaded[0].instruments == loaded[1].instruments


def test_no_instruments_is_a_success_with_none(app: Flask) -> None:
    """As published: a track may hold nothing to transcribe."""
    posted = post(app, midi_body({"state": "complete", "instruments": []}, task_id="m4"))
    [event] = posted.events("midi_generated")
    assert event.instruments == ()


@pytest.mark.parametrize("reseller", RESELLERS)
def test_a_failure_sent_to_the_midi_url_fires_midi_failed_only(app: Flask, reseller: str) -> None:
    body = build_callback("failed", family="midi", reseller=reseller, task_id="m5")
    assert not MIDI.detect(body)  # data null or {taskId}: nothing names the family
    posted = post(app, body, family="midi")
    assert posted.names == ["callback_received", "midi_failed"]
    [event] = posted.events("midi_failed")
    assert (event.task_id, event.stage, event.code, event.ok) == ("m5", "failed", 500, False)
    assert (event.state, event.instruments) == (None, ())


@pytest.mark.parametrize(
    ("note", "field"),
    [
        ({**NOTE, "pitch": 60.5}, "pitch"),
        ({**NOTE, "pitch": "C4"}, "pitch"),
        ({**NOTE, "start": "soon"}, "start"),
        ({**NOTE, "end": None}, "end"),
        ({**NOTE, "velocity": True}, "velocity"),
        ({"pitch": 60, "start": 0.5, "end": 0.75}, "velocity"),
    ],
)
def test_a_note_of_the_wrong_type_is_refused_with_422_naming_it(
    make_app: AppFactory, note: dict[str, Any], field: str
) -> None:
    notes = [NOTE, NOTE, note]
    body = midi_body({"instruments": [{"name": "Drums", "notes": notes}]}, task_id="m7")
    posted = post(make_app(TOKEN=None), body, url=OPEN_URL)
    assert_refused(posted, "data", "instruments", "0", "notes", "2", field)


@pytest.mark.parametrize("data", [{"state": "complete"}, {"instruments": None}])
def test_a_success_without_instruments_is_refused(make_app: AppFactory, data: Any) -> None:
    assert_refused(
        post(make_app(TOKEN=None), midi_body(data, task_id="m8"), family="midi", url=OPEN_URL)
    )


# --- thousands of notes --------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
note_values = (
    st.integers(-(2**40), 2**40)
    | finite
    | finite.map(repr)
    | st.sampled_from(["", " 1.5 ", "1_0", "nan", "inf", "1e400", "0x10", None, True, False])
    | json_values
)
notes = st.lists(
    st.dictionaries(st.sampled_from(["pitch", "start", "end", "velocity", "x"]), note_values)
    | st.fixed_dictionaries(
        {"pitch": st.integers(0, 127), "start": finite, "end": finite | finite.map(repr)},
        optional={"velocity": st.integers(0, 127) | finite},
    )
    | json_values,
    max_size=5,
)


@given(notes)
def test_the_quick_loop_takes_only_what_the_schema_takes_to_the_same_notes(
    items: list[Any],
) -> None:
    quick = quick_notes(items)
    try:
        loaded = NoteSchema(many=True).load(items)
    except ValidationError:
        assert quick is None
        return
    assert quick is None or quick == loaded


def test_thousands_of_notes_load_as_a_schema_per_note_would_load_them() -> None:
    """The loop that reads well-formed notes (benchmarks/test_parsing.py measures what it buys)
    gives what the schema would, on a body the size of a real transcription."""

    class NestedInstrument(InstrumentSchema):
        notes = fields.List(fields.Nested(NoteSchema), load_default=None, allow_none=True)

    class NestedData(MidiDataSchema):
        instruments = fields.List(fields.Nested(NestedInstrument), load_default=None)

    class NestedMidi(MidiSchema):
        data = fields.Nested(NestedData, load_default=None, allow_none=True)

    note_list = [
        {"pitch": 40 + i % 40, "start": i * 0.05, "end": repr(i * 0.05 + 0.1), "velocity": 1}
        for i in range(1000)
    ]
    body = midi_body(
        {"instruments": [{"name": f"I{k}", "notes": note_list} for k in range(5)]}, task_id="m9"
    )
    assert MIDI.load(body).instruments == NestedMidi().load(body).instruments


# --- polling: /api/v1/midi/record-info ----------------------------------------------------------

MIDI_DATA = {"state": "complete", "instruments": [{"name": "Drums", "notes": [NOTE]}]}


@pytest.mark.parametrize("flag", [1, "1"], ids=["integer", "string"])
@pytest.mark.parametrize("time", RECORD_TIMES.values(), ids=RECORD_TIMES.keys())
def test_a_success_record_reads_as_the_midi_callback(flag: Any, time: Any) -> None:
    answer = record_answer("r1", flag, time=time, midiData=MIDI_DATA, recordTaskId=-1)
    record = MIDI.read_record(answer)
    assert (record.task_id, record.status, record.final) == ("r1", "1", True)
    event = MIDI.load(record.body)
    assert (event.task_id, event.stage, event.state) == ("r1", "complete", "complete")
    assert event.instruments[0].notes[0].pitch == 73


def test_the_midi_data_is_read_under_response_too() -> None:
    answer = record_answer("r2", 1, response={"midiData": MIDI_DATA})
    assert MIDI.load(MIDI.read_record(answer).body).instruments[0].name == "Drums"


def test_an_empty_midi_data_is_a_success_with_no_instruments() -> None:
    """The docs warn that ``midiData`` may be empty after a stem split."""
    event = MIDI.load(MIDI.read_record(record_answer("r3", 1, midiData={})).body)
    assert (event.stage, event.instruments) == ("complete", ())


@pytest.mark.parametrize("flag", [0, "0"])
def test_a_pending_record_stands_for_no_callback(flag: Any) -> None:
    record = MIDI.read_record(record_answer("r4", flag))
    assert (record.body, record.final) == (None, False)


@pytest.mark.parametrize("flag", [2, 3, "2", "3"])
def test_a_failed_record_reads_as_a_failure(flag: Any) -> None:
    answer = record_answer("r5", flag, error_code=500, error_message="MIDI generation failed")
    record = MIDI.read_record(answer)
    assert record.final
    assert MIDI.detect(record.body)
    event = MIDI.load(record.body)
    assert (event.stage, event.code, event.msg) == ("failed", 500, "MIDI generation failed")


def test_a_success_record_without_midi_data_is_no_record() -> None:
    with pytest.raises(ValidationError):
        MIDI.read_record(record_answer("r6", 1))


# --- properties --------------------------------------------------------------------------------

BODIES = [
    *(
        build_callback(stage, family="midi", reseller=reseller, task_id="p1", tracks=2)
        for stage in ("complete", "failed")
        for reseller in RESELLERS
    ),
    midi_body({"state": "complete", "task_id": "p2", "instruments": INSTRUMENTS}),
]


@given(mutated(BODIES))
def test_any_value_anywhere_loads_an_event_or_is_refused(payload: dict[str, Any]) -> None:
    event = loads_or_refuses(MIDI, payload)
    if event is not None:
        assert isinstance(event, MidiEvent)
        for instrument in event.instruments:
            assert all(type(note.pitch) is int for note in instrument.notes)


@given(mutated(BODIES))
def test_posting_any_value_anywhere_is_never_a_server_error(
    open_app: Flask, guarded_app: Flask, payload: dict[str, Any]
) -> None:
    assert_never_a_server_error(open_app, guarded_app, payload, MIDI)
