"""The example app receives callbacks and shows them."""

from __future__ import annotations

from example_app import create_app
from flask_musiccallback.testing import build_callback


def test_example_app_receives_and_lists_a_task() -> None:
    app = create_app({"TESTING": True, "MUSICCALLBACK_TOKEN": "demo", "SERVER_NAME": "localhost"})
    client = app.test_client()
    payload = build_callback("complete", task_id="t1")
    answer = client.post("/music-callback?token=demo", json=payload)
    assert answer.status_code == 200
    page = client.get("/").get_data(as_text=True)
    assert "t1" in page
    assert "Neon Harbor" in page
