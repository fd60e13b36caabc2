"""The test servers' own promise: missing servers skip with a how-to, and fail on CI."""

from __future__ import annotations

import pytest

from .servers import missing


def test_a_missing_server_skips_and_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql redis-server"):
        missing("Redis (redis-server)")


def test_a_missing_server_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run every test"):
        missing("Redis (redis-server)")
