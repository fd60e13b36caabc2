"""The stems family: a track separated into vocals and instrumental, or split into stems.

What arrives (PROVIDER.md section 4): the task id at ``data.task_id``, and the links under
``data.vocal_removal_info`` (sunoapi.org) or ``data.vocal_separation_info`` (kie.ai), one
``<stem>_url`` per stem: ``vocal``, ``instrumental`` and ``origin`` for a vocal separation, and
``backing_vocals``, ``bass``, ``drums``, ... for a stem split; ``origin_url`` is often ``""``.
kie.ai's advanced split adds ``origin_data``, a list of ``{extract, remove}`` pairs, each an
``{id, audio_url, duration, stem_type_group_name}`` with spaces inside its link. The record
endpoint spells the same in camelCase (``instrumentalUrl``, ``pianoUrl``, ``originData``).
A failure sends the info ``null``.

Why it is read as it does:

- Either info key names the family, even ``null``: no other family has them, so a stems
  failure is placed by its keys too.
- Keys are folded to snake case before anything else, so a callback and a polled record (or a
  camelCase key leaking into a callback) read alike, and ``stems`` names each stem once:
  ``vocal``, ``backing_vocals``, ``piano``.
- ``stems`` holds the links that are there: a blank link is a stem the split did not make. A
  ``<name>_url`` key the schema does not list is taken too when it holds text: the provider adds
  stems, and a new one should reach the host without a release. Any other unknown key is left
  in ``raw``, never refused.
- Spaces in links are percent-encoded (``%20``), the only change made to a link: a URL cannot
  hold a space (RFC 3986), Python's HTTP client refuses one outright, and ``%20`` is what
  browsers and ``requests`` send for it, so the link reaches the same file from any client.
  The link exactly as sent stays in ``raw``.
- A success with no link and no part is refused: there is nothing in it for the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, post_load, pre_load

from ..archive.media import Media, readable
from ..events import FamilyEvent
from ..signals import stems_failed, stems_separated
from .base import COMPLETE, Family, complete_or_failed
from .envelope import DataSchema, EnvelopeSchema, Text, common_fields, keys_detector, outcome
from .examples import example_from, media_url
from .records import record_reader, word_statuses

STEMS_NAME = "stems"

#: Where the links arrive: sunoapi.org's key, then kie.ai's. Either names the family.
INFO_KEYS = ("vocal_removal_info", "vocal_separation_info")

#: What ends a stem's key, once folded to snake case.
URL_SUFFIX = "_url"

#: The stems a stem split makes, in the order the provider lists them.
SPLIT_STEMS = (
    "vocal",
    "backing_vocals",
    "drums",
    "bass",
    "guitar",
    "keyboard",
    "piano",
    "percussion",
    "strings",
    "synth",
    "fx",
    "brass",
    "woodwinds",
)


@dataclass(frozen=True, slots=True)
class StemAudio:
    """One side of an advanced split's part: a file, its length in seconds, and the stem group
    it belongs to (``stem_type_group_name``)."""

    id: str | None
    audio_url: str | None
    duration: float | None
    group: str | None


@dataclass(frozen=True, slots=True)
class StemPart:
    """One pair of kie.ai's advanced split (``origin_data``): the stem taken out (``extract``)
    and the rest of the track without it (``remove``)."""

    extract: StemAudio | None
    remove: StemAudio | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StemsEvent(FamilyEvent):
    """A vocal separation's or stem split's callback: stem name (``vocal``, ``drums``, ...) to
    link, and the advanced split's parts; both empty on failure."""

    family: ClassVar[str] = STEMS_NAME

    stems: Mapping[str, str]
    parts: tuple[StemPart, ...]


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake_case(key: str) -> str:
    """``backingVocalsUrl`` -> ``backing_vocals_url``; snake-case keys are left as they are."""
    return _CAMEL_HUMP.sub("_", key).lower()


def encoded(link: str) -> str:
    """A media link with its spaces percent-encoded (the module's docstring says why)."""
    return link.replace(" ", "%20")


class _SnakeCaseSchema(Schema):
    """Reads camelCase keys as their snake-case field; a blank spelling never hides a value."""

    @pre_load
    def fold_keys(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, dict):
            return data  # marshmallow reports the wrong type itself
        folded: dict[str, Any] = {}
        for key, value in data.items():
            key = snake_case(key) if isinstance(key, str) else key
            if value in (None, "") and folded.get(key) not in (None, ""):
                continue
            folded[key] = value
        return folded


class StemAudioSchema(_SnakeCaseSchema):
    """One side of an advanced split's part, loaded into a :class:`StemAudio`."""

    class Meta:
        unknown = EXCLUDE

    id = Text("The file's id.")
    audio_url = Text("The file's link; may hold spaces, handed over percent-encoded.")
    duration = fields.Float(
        load_default=None,
        allow_none=True,
        metadata={"description": "Seconds; numeric strings are accepted too."},
    )
    stem_type_group_name = Text("The stem group, e.g. `Vocals`.")

    @post_load
    def make_audio(self, loaded: dict[str, Any], **kwargs: Any) -> StemAudio:
        link = loaded["audio_url"]
        return StemAudio(
            id=loaded["id"],
            audio_url=None if link is None else encoded(link),
            duration=loaded["duration"],
            group=loaded["stem_type_group_name"],
        )


class StemPartSchema(Schema):
    """One ``origin_data`` pair, loaded into a :class:`StemPart`."""

    class Meta:
        unknown = EXCLUDE

    extract = fields.Nested(StemAudioSchema, load_default=None, allow_none=True)
    remove = fields.Nested(StemAudioSchema, load_default=None, allow_none=True)

    @post_load
    def make_part(self, loaded: dict[str, Any], **kwargs: Any) -> StemPart:
        return StemPart(extract=loaded["extract"], remove=loaded["remove"])


@dataclass(frozen=True, slots=True)
class _Separation:
    stems: Mapping[str, str]
    parts: tuple[StemPart, ...]


def _link(description: str) -> Text:
    return Text(f'{description}; `""` or `null` when the split did not make it.')


class StemInfoSchema(_SnakeCaseSchema):
    """The links of one separation; camelCase keys (the record's) are read as the same fields.

    Unknown keys are included, not validated, so that a ``<name>_url`` this schema does not list
    yet is still a stem (the module's docstring says why); nothing else unknown is read.
    """

    class Meta:
        unknown = INCLUDE

    vocal_url = _link("The vocals")
    instrumental_url = _link("The track without vocals (vocal separation)")
    origin_url = _link("The original track")
    backing_vocals_url = _link("Backing vocals (stem split)")
    drums_url = _link("Drums (stem split)")
    bass_url = _link("Bass (stem split)")
    guitar_url = _link("Guitar (stem split)")
    keyboard_url = _link("Keyboard (stem split)")
    piano_url = _link("Piano (stem split; seen in records)")
    percussion_url = _link("Percussion (stem split)")
    strings_url = _link("Strings (stem split)")
    synth_url = _link("Synthesizer (stem split)")
    fx_url = _link("Effects (stem split)")
    brass_url = _link("Brass (stem split)")
    woodwinds_url = _link("Woodwinds (stem split)")
    origin_data = fields.List(
        fields.Nested(StemPartSchema),
        load_default=None,
        allow_none=True,
        metadata={"description": "kie.ai's advanced split: `{extract, remove}` pairs."},
    )

    @post_load
    def make_separation(self, loaded: dict[str, Any], **kwargs: Any) -> _Separation:
        stems: dict[str, str] = {}
        for key, value in loaded.items():
            if (
                isinstance(key, str)
                and key.endswith(URL_SUFFIX)
                and isinstance(value, str)
                and value
            ):
                stems[key.removesuffix(URL_SUFFIX)] = encoded(value)
        return _Separation(MappingProxyType(stems), tuple(loaded["origin_data"] or ()))


class StemsDataSchema(DataSchema):
    vocal_removal_info = fields.Nested(
        StemInfoSchema,
        load_default=None,
        allow_none=True,
        metadata={"description": "The links (sunoapi.org, and kie.ai's advanced split)."},
    )
    vocal_separation_info = fields.Nested(
        StemInfoSchema,
        load_default=None,
        allow_none=True,
        metadata={"description": "The links, as kie.ai names them."},
    )


class StemsSchema(EnvelopeSchema):
    """A vocal separation or stem split callback, loaded into a :class:`StemsEvent`."""

    data = fields.Nested(StemsDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> StemsEvent:
        data: dict[str, Any] = loaded["data"] or {}
        info = data.get("vocal_removal_info") or data.get("vocal_separation_info")
        separation = info or _Separation(MappingProxyType({}), ())
        stage = outcome(
            loaded["code"],
            has_result=bool(separation.stems or separation.parts),
            at=INFO_KEYS[0],
            missing="A success without any stem.",
        )
        return StemsEvent(
            **common_fields(loaded, original, data, stage),
            stems=separation.stems,
            parts=separation.parts,
        )


stems_schema = StemsSchema()


#: Either info key at ``data``, whatever its value (a failure sends it ``null``).
is_stems = keys_detector(*INFO_KEYS)


def _success_data(response: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The record's links and parts as a callback's info; the schema folds their camelCase."""
    info = {
        key: value
        for key, value in response.items()
        if isinstance(key, str) and snake_case(key).endswith(URL_SUFFIX)
    }
    parts = response.get("originData") or response.get("origin_data")
    if parts:
        info["originData"] = parts
    if not parts and not any(isinstance(value, str) and value for value in info.values()):
        raise ValidationError("The record holds no stem.")
    return {INFO_KEYS[0]: info}


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    info: dict[str, Any] | None = None
    if stage == COMPLETE:
        names = ("vocal", "instrumental") if count <= 2 else SPLIT_STEMS[:count]
        info = {"origin_url": ""}
        info.update({f"{name}_url": media_url(task_id, "mp3", name) for name in names})
    key = INFO_KEYS[1] if reseller == "kie" else INFO_KEYS[0]
    return {"task_id": task_id, key: info}


#: A stems callback as each reseller sends it: a vocal separation (vocals, instrumental, a blank
#: origin) for ``count`` of 2 or less, else a stem split into the first ``count`` stems; kie.ai
#: names the info ``vocal_separation_info``.
example = example_from(
    _example_data,
    success="vocal separation generated successfully.",
    failure="Internal Error - Please try again later",
)


def media(event: StemsEvent) -> tuple[Media, ...]:
    """Every stem, named after it (``vocal``, ``drums``, ...), and each side of an advanced
    split's parts, named after its group and side (``Vocals-extract``) and its id."""
    files = [
        Media(readable(name, fallback="stem"), "mp3", url=url) for name, url in event.stems.items()
    ]
    seen = set(event.stems.values())
    for number, part in enumerate(event.parts, start=1):
        for side, audio in (("extract", part.extract), ("remove", part.remove)):
            if audio is None or not audio.audio_url or audio.audio_url in seen:
                continue
            seen.add(audio.audio_url)
            named = audio.group or audio.id
            name = readable(audio.group, side, audio.id) if named else f"part-{number}-{side}"
            files.append(Media(name, "mp3", url=audio.audio_url))
    return tuple(files)


STEMS = Family(
    name=STEMS_NAME,
    schema=stems_schema,
    load=stems_schema.load,
    signals=complete_or_failed(stems_separated, stems_failed),
    detect=is_stems,
    record_path="/api/v1/vocal-removal/record-info",
    read_record=record_reader(
        word_statuses("GENERATE_AUDIO_FAILED"),
        _success_data,
        failure_data={INFO_KEYS[0]: None},
    ),
    example=example,
    media=media,
)
