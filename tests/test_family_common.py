"""What every built-in family but music does alike (API.md section 9): a redelivery is a
duplicate, and a task id deduplicates only within its family, so a music ``complete`` and another
family's ``complete`` of one task id each fire once, in either order."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_musiccallback.families import BUILT_IN, MUSIC, Family
from flask_musiccallback.testing import build_callback

from .family_kit import assert_received_once, post

FAMILIES = [family for family in BUILT_IN if family is not MUSIC]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_redelivery_is_a_duplicate(app: Flask, family: Family) -> None:
    body = build_callback("complete", family=family.name, task_id="again")
    assert_received_once(post(app, body), family, "complete")
    again = post(app, body)
    assert (again.status, again.answer) == (200, {"status": "duplicate"})
    assert again.names == ["callback_duplicate"]
    assert [kwargs["reason"] for kwargs in again.sent("callback_duplicate")] == ["duplicate"]


@pytest.mark.parametrize("music_first", [True, False], ids=["music first", "music last"])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_music_complete_and_the_familys_complete_of_one_task_id_each_fire_once(
    app: Flask, family: Family, music_first: bool
) -> None:
    music_body = build_callback("complete", task_id="shared")
    family_body = build_callback("complete", family=family.name, task_id="shared")
    if music_first:
        music = post(app, music_body)
        assert_received_once(post(app, family_body), family, "complete")
    else:
        assert_received_once(post(app, family_body), family, "complete")
        music = post(app, music_body)
    assert music.names == ["callback_received", "all_tracks_generated"]
    for body in (music_body, family_body):
        assert post(app, body).answer == {"status": "duplicate"}
