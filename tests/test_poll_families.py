"""Polling every family but music (API.md section 9, PROVIDER.md section 6) over real HTTP, on a
store of each kind (memory, SQL, Redis): each family's own record endpoint is asked, its record
becomes the event its callback gives, and polls and callbacks share one deduplication. The store
sees a family's polled delivery as any other (tests/test_poll.py polls music on every store).
The provider is a fake served on 127.0.0.1 (tests/fake_provider.py).

Each family's records say their status the way that family's endpoint does: spelled statuses,
an integer ``successFlag`` (MIDI), an integer as text (cover), or a ``status`` of their own
(lyrics, voice), with the result under ``response`` (flat in ``data`` for voice) and the times in
each of the provider's forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import (
    CoverEvent,
    Instrument,
    Lyrics,
    LyricsEvent,
    MidiEvent,
    Note,
    StemsEvent,
    VideoEvent,
    VoiceEvent,
    WavEvent,
)
from flask_musiccallback.dispatch import Outcome
from flask_musiccallback.families import COVER, LYRICS, MIDI, STEMS, VIDEO, VOICE, WAV, Family
from flask_musiccallback.poll import PollResult
from flask_musiccallback.state import get_state
from flask_musiccallback.testing import build_callback

from .backends import Backend, StoreApp, make_backend
from .conftest import AppFactory
from .fake_provider import FakeProvider
from .family_kit import (
    MUSIC_SIGNALS,
    RECORD_TIMES,
    Recorded,
    assert_common,
    events,
    names,
    post,
    record_answer,
    signal_name,
)

API_KEY = "provider-api-key"
TASK = "poll-family-1"
CDN = "https://file.example"
ERROR_CODE = 531
ERROR_MESSAGE = "The provider could not finish the task"


@dataclass(frozen=True)
class Case:
    """One family's records as its endpoint answers them, and the event its success gives."""

    family: Family
    event_class: type
    _: KW_ONLY
    #: The record's status, as the family's endpoint spells it, for each state a poll can find.
    pending: Any
    success: Any
    failed: Any
    #: What a success record holds besides its status (``record_answer`` keywords).
    result: Mapping[str, Any]
    #: The success event's own fields, typed.
    fields: Mapping[str, Any]
    #: The record's creation and completion time, in one of the provider's forms.
    time: Any
    status_key: str = "successFlag"

    def record(self, status: Any, **result: Any) -> dict[str, Any]:
        return record_answer(TASK, status, status_key=self.status_key, time=self.time, **result)

    def success_record(self) -> dict[str, Any]:
        return self.record(self.success, **self.result)

    def failed_record(self) -> dict[str, Any]:
        return self.record(self.failed, error_code=ERROR_CODE, error_message=ERROR_MESSAGE)


#: A MIDI instrument with one note, its start as numeric text as kie.ai sends it.
DRUMS = {"name": "Drums", "notes": [{"pitch": 60, "start": "0.5", "end": 0.75, "velocity": 1}]}

CASES = [
    Case(
        LYRICS,
        LyricsEvent,
        status_key="status",
        pending="PENDING",
        success="SUCCESS",
        failed="GENERATE_LYRICS_FAILED",
        result={"response": {"taskId": TASK, "data": [{"text": "La", "status": "complete"}]}},
        fields={"lyrics": (Lyrics(text="La", title=None, status="complete", error=None),)},
        time=RECORD_TIMES["epoch-ms"],
    ),
    Case(
        WAV,
        WavEvent,
        pending="PENDING",
        success="SUCCESS",
        failed="GENERATE_WAV_FAILED",
        result={"response": {"taskId": TASK, "audioWavUrl": f"{CDN}/a.wav"}},
        fields={"wav_url": f"{CDN}/a.wav"},
        time=RECORD_TIMES["iso-z"],
    ),
    Case(
        STEMS,
        StemsEvent,
        pending="PENDING",
        success="SUCCESS",
        failed="GENERATE_AUDIO_FAILED",
        result={"response": {"vocalUrl": f"{CDN}/v.mp3", "instrumentalUrl": f"{CDN}/i.mp3"}},
        fields={"stems": {"vocal": f"{CDN}/v.mp3", "instrumental": f"{CDN}/i.mp3"}, "parts": ()},
        time=RECORD_TIMES["iso-z-ms"],
    ),
    Case(
        MIDI,
        MidiEvent,
        pending=0,
        success=1,
        failed=2,
        result={"response": {"midiData": {"state": "complete", "instruments": [DRUMS]}}},
        fields={
            "state": "complete",
            "instruments": (Instrument("Drums", (Note(60, 0.5, 0.75, 1.0),)),),
        },
        time=RECORD_TIMES["plain"],
    ),
    Case(
        VIDEO,
        VideoEvent,
        pending="PENDING",
        success="SUCCESS",
        failed="GENERATE_MP4_FAILED",
        result={"response": {"videoUrl": f"{CDN}/v.mp4"}},
        fields={"video_url": f"{CDN}/v.mp4"},
        time=RECORD_TIMES["epoch-ms"],
    ),
    Case(
        COVER,
        CoverEvent,
        pending="0",
        success="1",
        failed="3",
        result={"response": {"images": [f"{CDN}/1.png", f"{CDN}/2.png"]}},
        fields={"images": (f"{CDN}/1.png", f"{CDN}/2.png")},
        time=RECORD_TIMES["iso-z"],
    ),
    Case(
        VOICE,
        VoiceEvent,
        status_key="status",
        pending="wait_processing",
        success="success",
        failed="fail",
        result={"voiceId": "voice_5k2j", "error_code": 0},
        fields={"voice_id": "voice_5k2j", "status": "success", "error_code": 0, "error": None},
        time=RECORD_TIMES["plain"],
    ),
]
BY_NAME = {case.family.name: case for case in CASES}


@pytest.fixture(params=CASES, ids=lambda case: case.family.name)
def case(request: pytest.FixtureRequest) -> Case:
    case: Case = request.param
    return case


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A store of each kind; what differs between stores of one kind is tested elsewhere."""
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
def musiccallback_app(store_app: StoreApp, provider: FakeProvider) -> Flask:
    """A polled event is kept and deduplicated as a callback is."""
    return store_app(API_KEY=API_KEY, API_BASE_URL=provider.url)


def poll(app: Flask, case: Case) -> PollResult:
    return get_state(app).extension.poll(TASK, family=case.family.name)


def deliver_callback(app: Flask, case: Case) -> dict[str, Any]:
    """The callback of the stage a success record stands for, as the provider posts it."""
    return post(app, build_callback("complete", family=case.family.name, task_id=TASK)).answer


def success_signals(recorded: Recorded, case: Case) -> list[Any]:
    """The events the family's success signal was sent with."""
    return events(recorded, signal_name(case.family, "complete"))


def assert_fired_once_then_duplicate(recorded: Recorded, case: Case) -> None:
    """The success reached the host once, however many times polls and callbacks reported it,
    and the latest report was turned away as a duplicate."""
    assert len(success_signals(recorded, case)) == 1
    assert names(recorded)[-1] == "callback_duplicate"


def test_a_pending_record_is_asked_at_the_familys_own_endpoint_and_dispatches_nothing(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.record(case.pending))

    result = poll(musiccallback_app, case)

    assert provider.paths == [case.family.record_path]
    assert provider.requests == [{"task_id": TASK, "authorization": f"Bearer {API_KEY}"}]
    assert (result.status, result.event, result.outcome, result.final) == (
        str(case.pending).upper(),
        None,
        None,
        False,
    )
    assert musiccallback_signals == []


def test_a_success_fires_the_familys_signal_once_with_typed_fields(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.success_record())

    result = poll(musiccallback_app, case)

    assert (result.status, result.final, result.outcome) == (
        str(case.success).upper(),
        True,
        Outcome.RECEIVED,
    )
    assert names(musiccallback_signals) == [
        "callback_received",
        signal_name(case.family, "complete"),
    ]
    [event] = success_signals(musiccallback_signals, case)
    assert event is result.event
    assert isinstance(event, case.event_class)
    assert_common(event, case.family)
    assert (event.task_id, event.stage, event.code, event.ok) == (TASK, "complete", 200, True)
    assert {name: getattr(event, name) for name in case.fields} == case.fields


def test_a_second_poll_is_a_duplicate(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.success_record())

    first = poll(musiccallback_app, case)
    second = poll(musiccallback_app, case)

    assert (first.outcome, second.outcome) == (Outcome.RECEIVED, Outcome.DUPLICATE)
    assert_fired_once_then_duplicate(musiccallback_signals, case)


def test_the_callback_after_the_poll_is_a_duplicate(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.success_record())
    poll(musiccallback_app, case)

    answer = deliver_callback(musiccallback_app, case)

    assert answer == {"status": "duplicate"}
    assert_fired_once_then_duplicate(musiccallback_signals, case)


def test_a_poll_after_the_callback_is_a_duplicate(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    assert deliver_callback(musiccallback_app, case) == {"status": "received"}
    provider.script(TASK, case.success_record())

    result = poll(musiccallback_app, case)

    assert result.outcome is Outcome.DUPLICATE
    assert_fired_once_then_duplicate(musiccallback_signals, case)


def test_a_failed_record_fires_the_familys_failure_signal_with_its_error(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.failed_record())

    result = poll(musiccallback_app, case)

    assert result.final
    assert names(musiccallback_signals) == ["callback_received", signal_name(case.family, "failed")]
    event = result.event
    assert event is not None
    assert_common(event, case.family)
    assert (event.stage, event.ok, event.code, event.msg) == (
        "failed",
        False,
        ERROR_CODE,
        ERROR_MESSAGE,
    )


def test_the_poll_command_prints_the_status_and_dispatches(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded, case: Case
) -> None:
    provider.script(TASK, case.success_record())

    result = musiccallback_app.test_cli_runner().invoke(
        args=["musiccallback", "poll", TASK, "--family", case.family.name]
    )

    assert (result.exit_code, result.output) == (
        0,
        f"{str(case.success).upper()}: complete dispatched\n",
    )
    assert provider.paths == [case.family.record_path]
    assert len(success_signals(musiccallback_signals, case)) == 1
    assert not MUSIC_SIGNALS & set(names(musiccallback_signals))


def test_the_poll_command_refuses_a_family_no_one_registered(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    app = make_app(API_KEY=API_KEY, API_BASE_URL=provider.url)

    result = app.test_cli_runner().invoke(args=["musiccallback", "poll", TASK, "--family", "nope"])

    assert result.exit_code == 2
    assert "--family" in result.output
    assert "No callback family named 'nope'" in result.output
    assert provider.requests == []


def test_the_poll_command_watches_one_familys_task_until_it_ends(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    midi = BY_NAME["midi"]
    provider.script(TASK, midi.record(midi.pending), midi.success_record())

    result = musiccallback_app.test_cli_runner().invoke(
        args=["musiccallback", "poll", TASK, "--family", "midi", "--watch", "--interval", "0.5"]
    )

    assert (result.exit_code, result.output) == (
        0,
        "0: nothing to dispatch yet\n1: complete dispatched\n",
    )
    assert provider.paths == [MIDI.record_path] * 2
    assert len(success_signals(musiccallback_signals, midi)) == 1


def test_a_voice_phrase_record_fires_voice_phrase_ready_and_is_not_final(
    musiccallback_app: Flask, provider: FakeProvider, musiccallback_signals: Recorded
) -> None:
    voice = BY_NAME["voice"]
    phrase = "Neon rain on an empty street, sing it slow."
    provider.script(
        TASK, voice.record("wait_validating", validateInfo=phrase), voice.success_record()
    )

    first = poll(musiccallback_app, voice)
    second = poll(musiccallback_app, voice)

    assert (first.status, first.final, first.outcome) == (
        "WAIT_VALIDATING",
        False,
        Outcome.RECEIVED,
    )
    assert first.event is not None
    assert isinstance(first.event, VoiceEvent)
    assert (first.event.stage, first.event.validate_info) == ("phrase", phrase)
    assert (second.final, second.outcome) == (True, Outcome.RECEIVED)
    assert names(musiccallback_signals) == [
        "callback_received",
        "voice_phrase_ready",
        "callback_received",
        "voice_generated",
    ]
