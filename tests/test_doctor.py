"""``flask musiccallback doctor`` (API.md §12): one line per check, exit 1 on a failure, against
real servers up and down: PostgreSQL, Redis, a Celery broker, the fake provider, the file system.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from click.testing import Result
from flask import Flask

from flask_musiccallback.doctor import PROBE_TASK_ID, Status, check_store, run_checks
from flask_musiccallback.state import get_state

from .backends import with_flask_sqlalchemy
from .conftest import TOKEN, AppFactory
from .fake_provider import FakeProvider
from .servers import RedisServer, free_port, serve_url, start_redis

PUBLIC = "https://music.example.com"


def doctor(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["musiccallback", "doctor", *args])


def lines(result: Result) -> dict[str, tuple[str, str]]:
    """Each check's status and detail, by name."""
    found = {}
    for line in result.output.splitlines():
        status, name, detail = line.split(None, 2)
        found[name] = (status, detail)
    return found


def line(result: Result, name: str) -> tuple[str, str]:
    return lines(result)[name]


def healthy(make_app: AppFactory, **config: Any) -> Flask:
    config.setdefault("EXTERNAL_URL", PUBLIC)
    return make_app(**config)


def assert_failed_cleanly(result: Result) -> None:
    """Exit status 1, every check still printed, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert len(lines(result)) == 6


# -- a healthy app ----------------------------------------------------------------------------


def test_a_healthy_memory_app_passes_with_one_line_per_check(make_app: AppFactory) -> None:
    result = doctor(healthy(make_app))
    assert result.exit_code == 0, result.output
    assert {name: status for name, (status, _) in lines(result).items()} == {
        "configuration": "ok",
        "store": "ok",
        "broker": "skip",
        "api-key": "skip",
        "callback-url": "ok",
        "archive": "skip",
    }


def test_the_configuration_line_names_dispatch_store_and_source_checks(
    make_app: AppFactory,
) -> None:
    status, detail = line(doctor(healthy(make_app, HMAC_KEY="k")), "configuration")
    assert status == "ok"
    assert "dispatch sync" in detail
    assert "store memory://" in detail
    assert "token (1)" in detail
    assert "HMAC (1)" in detail


def test_no_token_hmac_key_or_allow_list_warns_without_failing(make_app: AppFactory) -> None:
    result = doctor(healthy(make_app, TOKEN=None))
    assert result.exit_code == 0
    status, detail = line(result, "configuration")
    assert status == "warn"
    assert "anybody" in detail


def test_the_checks_are_plain_functions_a_host_can_run(make_app: AppFactory) -> None:
    checks = run_checks(healthy(make_app))
    assert [check.name for check in checks][:2] == ["configuration", "store"]
    assert all(check.status in (Status.OK, Status.SKIP) for check in checks)


# -- the store --------------------------------------------------------------------------------


def test_postgresql_up_is_ok_with_its_round_trip(make_app: AppFactory, postgresql_url: str) -> None:
    app = healthy(make_app, STORE=postgresql_url)
    get_state(app).store.expect("doctor-task", "music")  # the store makes its tables at first use
    result = doctor(app)
    assert result.exit_code == 0, result.output
    status, detail = line(result, "store")
    assert status == "ok"
    assert "round trip" in detail
    assert " ms" in detail
    assert "tables musiccallback_deliveries" in detail


def test_postgresql_down_fails_without_a_traceback_or_the_password(make_app: AppFactory) -> None:
    url = f"postgresql+psycopg://doctor:s3cret@127.0.0.1:{free_port()}/callbacks"
    result = doctor(healthy(make_app, STORE=url))
    assert_failed_cleanly(result)
    status, detail = line(result, "store")
    assert status == "fail"
    assert "unreachable" in detail
    assert "s3cret" not in result.output


def test_tables_missing_from_the_hosts_database_fail(make_app: AppFactory, tmp_path: Path) -> None:
    """With ``sqlalchemy://`` the tables are the host's to create (db.create_all, a migration)."""
    from flask_sqlalchemy import SQLAlchemy

    app = healthy(make_app, STORE="sqlalchemy://")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'host.db'}"
    SQLAlchemy().init_app(app)
    result = doctor(app)
    assert_failed_cleanly(result)
    status, detail = line(result, "store")
    assert status == "fail"
    assert "missing: musiccallback_deliveries" in detail
    assert "create_all" in detail


def test_tables_the_hosts_database_has_pass(make_app: AppFactory, tmp_path: Path) -> None:
    app = healthy(make_app, STORE="sqlalchemy://")
    with_flask_sqlalchemy(f"sqlite:///{tmp_path / 'host.db'}")(app)
    assert line(doctor(app), "store")[0] == "ok"


def test_tables_not_made_yet_by_the_extensions_own_engine_warn_and_are_not_made(
    make_app: AppFactory, postgresql_url: str
) -> None:
    app = healthy(make_app, STORE=postgresql_url)
    result = doctor(app)
    assert result.exit_code == 0
    status, detail = line(result, "store")
    assert status == "warn"
    assert "created at the store's first use" in detail
    with app.app_context():
        again = check_store(app)
    assert again.status is Status.WARN  # the check created nothing


def test_redis_up_is_ok_with_its_round_trip(make_app: AppFactory, redis_url: str) -> None:
    result = doctor(healthy(make_app, STORE=redis_url))
    assert result.exit_code == 0, result.output
    status, detail = line(result, "store")
    assert status == "ok"
    assert "round trip" in detail
    assert "keyspace musiccallback:* empty" in detail


def test_a_redis_keyspace_in_use_says_so(make_app: AppFactory, redis_url: str) -> None:
    app = healthy(make_app, STORE=redis_url)
    get_state(app).store.expect("doctor-task", "music")
    assert "keyspace musiccallback:* in use" in line(doctor(app), "store")[1]


def test_redis_down_fails_without_a_traceback_or_the_password(make_app: AppFactory) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = doctor(healthy(make_app, STORE=url))
    assert_failed_cleanly(result)
    assert line(result, "store")[0] == "fail"
    assert "s3cret" not in result.output


def test_a_store_that_never_answers_fails_within_its_timeout(make_app: AppFactory) -> None:
    server = start_redis()
    app = healthy(make_app, STORE=server.url(0) + "?timeout=1")
    try:
        with server.frozen():
            started = time.monotonic()
            result = doctor(app)
            took = time.monotonic() - started
    finally:
        server.remove()
    assert_failed_cleanly(result)
    assert line(result, "store")[0] == "fail"
    assert took < 10


def test_a_redis_that_evicts_keys_when_full_warns(make_app: AppFactory) -> None:
    server = start_redis()
    try:
        import redis

        with redis.Redis(host=server.host, port=server.port) as admin:
            admin.config_set("maxmemory", "100mb")
            admin.config_set("maxmemory-policy", "allkeys-lru")
        status, detail = line(doctor(healthy(make_app, STORE=server.url(0))), "store")
    finally:
        server.remove()
    assert status == "warn"
    assert "allkeys-lru" in detail
    assert "noeviction" in detail


# -- the Celery broker ------------------------------------------------------------------------


def celery_app(make_app: AppFactory, broker_url: str) -> Flask:
    from celery import Celery

    app = healthy(make_app, DISPATCH="celery")
    app.extensions["celery"] = Celery(app.name, broker=broker_url)
    return app


def test_a_broker_up_is_ok_under_celery_dispatch(
    make_app: AppFactory, redis_server: RedisServer
) -> None:
    app = celery_app(make_app, redis_server.url(5))
    try:
        result = doctor(app)
    finally:
        app.extensions["celery"].close()
    assert result.exit_code == 0, result.output
    status, detail = line(result, "broker")
    assert status == "ok"
    assert "connected in" in detail


def test_a_broker_down_fails_without_its_password(make_app: AppFactory) -> None:
    app = celery_app(make_app, f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    try:
        result = doctor(app, "--timeout", "2")
    finally:
        app.extensions["celery"].close()
    assert_failed_cleanly(result)
    status, detail = line(result, "broker")
    assert status == "fail"
    assert "unreachable" in detail
    assert "s3cret" not in result.output


def test_a_broker_that_takes_the_connection_and_never_answers_fails_in_time(
    make_app: AppFactory,
) -> None:
    server = start_redis()
    app = celery_app(make_app, server.url(0))
    try:
        with server.frozen():
            started = time.monotonic()
            result = doctor(app, "--timeout", "1")
            took = time.monotonic() - started
    finally:
        app.extensions["celery"].close()
        server.remove()
    assert_failed_cleanly(result)
    assert "no answer within 1 s" in line(result, "broker")[1]
    assert took < 10


def test_celery_dispatch_without_a_celery_app_fails(make_app: AppFactory) -> None:
    result = doctor(healthy(make_app, DISPATCH="celery"))
    assert_failed_cleanly(result)
    assert "needs a Celery app" in line(result, "broker")[1]


# -- the provider's API key -------------------------------------------------------------------


def test_an_api_key_the_provider_accepts_is_ok(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    provider.api_key = "right-key"
    result = doctor(healthy(make_app, API_KEY="right-key", API_BASE_URL=provider.url))
    assert result.exit_code == 0, result.output
    status, detail = line(result, "api-key")
    assert status == "ok"
    assert f"accepted by {provider.url}" in detail
    assert provider.requests[-1]["authorization"] == "Bearer right-key"


def test_an_api_key_the_provider_refuses_fails(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    provider.api_key = "right-key"
    result = doctor(healthy(make_app, API_KEY="wrong-key", API_BASE_URL=provider.url))
    assert_failed_cleanly(result)
    status, detail = line(result, "api-key")
    assert status == "fail"
    assert "refused the API key" in detail
    assert "wrong-key" not in result.output


def test_a_provider_out_of_reach_fails(make_app: AppFactory) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = doctor(healthy(make_app, API_KEY="k", API_BASE_URL=url))
    assert_failed_cleanly(result)
    assert "cannot reach the provider" in line(result, "api-key")[1]


def test_a_provider_under_maintenance_warns_that_the_key_was_not_checked(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    provider.script(PROBE_TASK_ID, {"code": 455, "msg": "maintenance", "data": None})
    result = doctor(healthy(make_app, API_KEY="k", API_BASE_URL=provider.url))
    assert result.exit_code == 0
    status, detail = line(result, "api-key")
    assert status == "warn"
    assert "not checked now" in detail


def test_a_base_url_that_is_no_provider_fails(make_app: AppFactory) -> None:
    """A web page answering 200 to anything is not a key accepted."""
    site = Flask("somebody_elses_site")
    site.add_url_rule("/<path:anything>", view_func=lambda anything: "<html>hello</html>")
    with serve_url(site) as url:
        result = doctor(healthy(make_app, API_KEY="k", API_BASE_URL=url))
    assert_failed_cleanly(result)
    assert line(result, "api-key")[0] == "fail"


# -- the callback URL -------------------------------------------------------------------------


def test_an_https_callback_url_is_ok_and_shown_without_its_token(make_app: AppFactory) -> None:
    result = doctor(healthy(make_app))
    status, detail = line(result, "callback-url")
    assert status == "ok"
    assert detail == f"{PUBLIC}/music-callback?token=[redacted]"
    assert TOKEN not in result.output


def test_an_http_callback_url_warns(make_app: AppFactory) -> None:
    result = doctor(healthy(make_app, EXTERNAL_URL="http://music.example.com"))
    assert result.exit_code == 0
    status, detail = line(result, "callback-url")
    assert status == "warn"
    assert "not https" in detail


def test_a_callback_url_on_this_machine_warns(make_app: AppFactory) -> None:
    status, detail = line(
        doctor(healthy(make_app, EXTERNAL_URL="https://127.0.0.1:5000")), "callback-url"
    )
    assert status == "warn"
    assert "cannot reach" in detail


def test_server_name_builds_the_callback_url(make_app: AppFactory) -> None:
    app = make_app()
    app.config.update(SERVER_NAME="music.example.com", PREFERRED_URL_SCHEME="https")
    assert line(doctor(app), "callback-url") == (
        "ok",
        "https://music.example.com/music-callback?token=[redacted]",
    )


def test_no_external_url_nor_server_name_fails(make_app: AppFactory) -> None:
    result = doctor(make_app())
    assert_failed_cleanly(result)
    status, detail = line(result, "callback-url")
    assert status == "fail"
    assert "MUSICCALLBACK_EXTERNAL_URL" in detail


# -- the archive ------------------------------------------------------------------------------


def test_an_archive_folder_is_writable_and_the_probe_is_removed(
    make_app: AppFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "media"
    result = doctor(healthy(make_app, ARCHIVE=f"file://{folder}"))
    assert result.exit_code == 0, result.output
    status, detail = line(result, "archive")
    assert status == "ok"
    assert "writable" in detail
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_an_archive_on_a_read_only_file_system_fails(make_app: AppFactory) -> None:
    """/proc takes no new file, whoever asks: the read-only case even for root."""
    result = doctor(healthy(make_app, ARCHIVE="file:///proc/musiccallback-archive"))
    assert_failed_cleanly(result)
    status, detail = line(result, "archive")
    assert status == "fail"
    assert "not writable" in detail


def test_an_archive_path_that_cannot_exist_fails(make_app: AppFactory, tmp_path: Path) -> None:
    """A folder under a file: no such path can be made."""
    (tmp_path / "a-file").write_text("")
    result = doctor(healthy(make_app, ARCHIVE=f"file://{tmp_path / 'a-file' / 'media'}"))
    assert_failed_cleanly(result)
    assert line(result, "archive")[0] == "fail"
