"""Setting up: init_app, app factories, configuration, callback_url, the CLI group."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import (
    CallbackEvent,
    ConfigurationError,
    MemoryStore,
    MusicCallback,
    StoreError,
)
from flask_musiccallback.config import DEFAULTS
from flask_musiccallback.state import MusicCallbackState
from flask_musiccallback.testing import build_callback

from .conftest import TOKEN, URL, AppFactory


def new_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config.update(config)
    return app


def test_state_lives_in_app_extensions(app: Flask) -> None:
    state = app.extensions["musiccallback"]
    assert isinstance(state, MusicCallbackState)
    assert isinstance(state.store, MemoryStore)


def test_defaults_are_set_into_the_config_without_overwriting() -> None:
    app = new_app(MUSICCALLBACK_DEDUP_TTL=60)
    MusicCallback(app)
    for key, value in DEFAULTS.items():
        if key != "MUSICCALLBACK_DEDUP_TTL":
            assert app.config[key] == value
    assert app.config["MUSICCALLBACK_DEDUP_TTL"] == 60
    assert app.extensions["musiccallback"].store.ttl == 60


def test_second_init_app_on_one_app_raises() -> None:
    app = new_app()
    music = MusicCallback(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        music.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        MusicCallback(app)


def test_app_factory_form_serves_several_apps_with_their_own_stores() -> None:
    music = MusicCallback()
    one, two = new_app(), new_app()
    music.init_app(one)
    music.init_app(two)
    payload = build_callback("complete", task_id="same")
    for app in (one, two):
        assert app.test_client().post("/music-callback", json=payload).json == {
            "status": "received"
        }
    assert one.extensions["musiccallback"].store is not two.extensions["musiccallback"].store


def test_a_memory_store_passed_in_code_keeps_the_apps_it_serves_apart() -> None:
    music = MusicCallback(store=MemoryStore(ttl=60))
    one, two = new_app(), new_app()
    music.init_app(one)
    music.init_app(two)
    payload = build_callback("complete", task_id="same")
    answers = [
        app.test_client().post("/music-callback", json=payload).json for app in (one, two, one)
    ]
    assert answers == [{"status": "received"}, {"status": "received"}, {"status": "duplicate"}]


def test_on_registered_before_init_app_runs_for_every_app_served() -> None:
    music = MusicCallback()
    seen: list[tuple[str, str]] = []

    @music.on("complete")
    def save(event: CallbackEvent) -> None:
        seen.append((event.task_id, event.stage))

    apps = [new_app(), new_app()]
    for app in apps:
        music.init_app(app)
        app.test_client().post("/music-callback", json=build_callback(task_id=app.name))
    assert len(seen) == 2


def test_on_does_not_run_for_apps_of_another_extension_object() -> None:
    music, other = MusicCallback(), MusicCallback()
    seen: list[str] = []
    music.on("complete")(lambda event: seen.append(event.task_id))
    app = new_app()
    other.init_app(app)
    app.test_client().post("/music-callback", json=build_callback())
    assert seen == []


def test_on_rejects_an_unknown_stage() -> None:
    with pytest.raises(ValueError, match="nope"):
        MusicCallback().on("nope")


def test_store_passed_in_code_wins_over_config() -> None:
    store = MemoryStore(ttl=30)
    app = new_app(MUSICCALLBACK_STORE="redis://never-used:6379/0")
    MusicCallback(app, store=store)
    assert app.extensions["musiccallback"].store is store


def test_memory_store_url_takes_max_entries() -> None:
    app = new_app(MUSICCALLBACK_STORE="memory://?max_entries=10")
    MusicCallback(app)
    assert app.extensions["musiccallback"].store.max_entries == 10


def test_unknown_store_scheme_fails_at_start_up_with_a_clear_error() -> None:
    with pytest.raises(StoreError, match="ftp"):
        MusicCallback(new_app(MUSICCALLBACK_STORE="ftp://x"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MUSICCALLBACK_URL_RULE", "no-slash"),
        ("MUSICCALLBACK_DEDUP_TTL", 0),
        ("MUSICCALLBACK_DEDUP_TTL", "7 days"),
        ("MUSICCALLBACK_MAX_CONTENT_LENGTH", -1),
        ("MUSICCALLBACK_TIMESTAMP_TOLERANCE", True),
        ("MUSICCALLBACK_DISPATCH", "carrier-pigeon"),
        ("MUSICCALLBACK_RECEIVER_ERRORS", "ignore"),
        ("MUSICCALLBACK_TOKEN", ""),
        ("MUSICCALLBACK_TOKEN", ["ok", 5]),
        ("MUSICCALLBACK_STORE", ""),
    ],
)
def test_bad_configuration_fails_at_start_up_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        MusicCallback(new_app(**{key: value}))


# callback_url


def test_callback_url_in_a_request_is_absolute_with_the_token(app: Flask) -> None:
    music: MusicCallback = app.extensions["musiccallback"].extension
    with app.test_request_context(base_url="https://music.example.com"):
        assert music.callback_url() == f"https://music.example.com/music-callback?token={TOKEN}"


def test_callback_url_uses_server_name_outside_a_request() -> None:
    app = new_app(
        MUSICCALLBACK_TOKEN="abc", SERVER_NAME="hooks.example.com", PREFERRED_URL_SCHEME="https"
    )
    music = MusicCallback(app)
    assert music.callback_url() == "https://hooks.example.com/music-callback?token=abc"


def test_external_url_is_the_base_anywhere() -> None:
    app = new_app(
        MUSICCALLBACK_TOKEN="abc",
        MUSICCALLBACK_EXTERNAL_URL="https://public.example.com/app/",
        MUSICCALLBACK_URL_RULE="/cb",
    )
    music = MusicCallback(app)
    assert music.callback_url() == "https://public.example.com/app/cb?token=abc"
    assert music.callback_url(job="42") == "https://public.example.com/app/cb?job=42&token=abc"


def test_callback_url_extra_params_and_first_token_of_a_list() -> None:
    app = new_app(MUSICCALLBACK_TOKEN=["current", "previous"], SERVER_NAME="x.test")
    music = MusicCallback(app)
    url = music.callback_url(user="7")
    assert url.startswith("http://x.test/music-callback?")
    assert "token=current" in url
    assert "user=7" in url


def test_callback_url_without_a_way_to_know_the_host_explains_itself(app: Flask) -> None:
    music: MusicCallback = app.extensions["musiccallback"].extension
    with pytest.raises(RuntimeError, match="MUSICCALLBACK_EXTERNAL_URL"):
        music.callback_url()


def test_callback_url_picks_the_current_app_among_several() -> None:
    music = MusicCallback()
    one = new_app(MUSICCALLBACK_EXTERNAL_URL="https://one.test")
    two = new_app(MUSICCALLBACK_EXTERNAL_URL="https://two.test")
    music.init_app(one)
    music.init_app(two)
    with two.app_context():
        assert music.callback_url() == "https://two.test/music-callback"
    with pytest.raises(RuntimeError, match="app context"):
        music.callback_url()


def test_callback_url_is_accepted_by_the_endpoint() -> None:
    app = new_app(MUSICCALLBACK_TOKEN="s3cret/with+chars", SERVER_NAME="localhost")
    music = MusicCallback(app)
    url = music.callback_url()
    answer = app.test_client().post(url, json=build_callback())
    assert answer.status_code == 200


def test_cli_group_is_registered_and_url_prints_the_callback_url() -> None:
    app = new_app(MUSICCALLBACK_TOKEN="abc", MUSICCALLBACK_EXTERNAL_URL="https://pub.test")
    MusicCallback(app)
    result = app.test_cli_runner().invoke(args=["musiccallback", "url"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "https://pub.test/music-callback?token=abc"


def test_cli_is_reachable_through_the_flask_command_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="flask.commands")}
    assert names.get("musiccallback") == "flask_musiccallback.cli:musiccallback"


def test_endpoint_is_a_blueprint_named_musiccallback(app: Flask) -> None:
    assert "musiccallback" in app.blueprints
    rules = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    assert rules["/music-callback"] == "musiccallback.receive"


def test_get_state_on_an_uninitialised_app_explains_itself() -> None:
    from flask_musiccallback.state import get_state

    with pytest.raises(RuntimeError, match="init_app"):
        get_state(new_app())


def test_quick_start_of_the_readme_works(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    from flask_musiccallback import all_tracks_generated

    titles: list[str | None] = []

    @all_tracks_generated.connect_via(app)
    def save_tracks(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
        titles.extend(track.title for track in event.tracks)

    client.post(URL, json=build_callback("complete", tracks=2))
    all_tracks_generated.disconnect(save_tracks)
    assert len(titles) == 2
