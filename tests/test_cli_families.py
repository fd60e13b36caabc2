"""The command line knows every family: ``simulate --family``, ``poll --family``, and what
``list`` and ``show`` print of a family's deliveries."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_musiccallback.families import BUILT_IN
from flask_musiccallback.testing import record_signals

from .backends import sqlite_url
from .conftest import AppFactory

#: The success signal of each family's first stage, and its failure signal.
FIRST_SIGNAL = {
    family.name: str(family.signals[family.stages[0]].name).replace("-", "_")
    for family in BUILT_IN
}
FAILURE_SIGNAL = {
    family.name: str(family.signals["failed"].name).replace("-", "_") for family in BUILT_IN
}


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["musiccallback", *args])


def stage_signals(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in recorded if name not in ("callback_received",)]


@pytest.mark.parametrize("reseller", ["sunoapi", "kie"])
@pytest.mark.parametrize("family", [family.name for family in BUILT_IN if family.name != "music"])
def test_simulate_sends_a_realistic_success_of_each_family(
    make_app: AppFactory, family: str, reseller: str
) -> None:
    app = make_app()
    with record_signals(app) as recorded:
        result = run(app, "simulate", "--family", family, "--reseller", reseller, "--task-id", "s1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"Task s1 ({family}) -> the app in-process"
    assert stage_signals(recorded) == [FIRST_SIGNAL[family]]
    assert recorded[-1][1]["event"].family == family


@pytest.mark.parametrize("family", [family.name for family in BUILT_IN])
def test_simulate_sends_each_familys_failure_to_its_own_failure_signal(
    make_app: AppFactory, family: str
) -> None:
    app = make_app()
    with record_signals(app) as recorded:
        result = run(app, "simulate", "--family", family, "--stage", "failed")
    assert result.exit_code == 0, result.output
    assert stage_signals(recorded) == [FAILURE_SIGNAL[family]]


def test_simulate_refuses_a_stage_the_family_has_not(make_app: AppFactory) -> None:
    result = run(make_app(), "simulate", "--family", "wav", "--stage", "first")
    assert result.exit_code == 2
    assert "'first' is not one of complete, failed" in result.output


def test_simulate_refuses_a_family_that_is_not_registered(make_app: AppFactory) -> None:
    result = run(make_app(), "simulate", "--family", "karaoke")
    assert result.exit_code == 2
    assert "No callback family named 'karaoke'" in result.output


def test_list_and_show_name_each_deliverys_family(make_app: AppFactory, tmp_path: Any) -> None:
    app = make_app(STORE=sqlite_url(tmp_path))
    assert run(app, "simulate", "--family", "wav", "--task-id", "w1").exit_code == 0
    listed = run(app, "list", "--task-id", "w1")
    assert listed.exit_code == 0, listed.output
    assert "wav:complete" in listed.output
    delivery_id = listed.output.split()[0] if listed.output.split()[0] != "ID" else None
    kept = [line for line in listed.output.splitlines() if "wav:complete" in line]
    delivery_id = kept[0].split()[0]
    shown = run(app, "show", delivery_id)
    assert shown.exit_code == 0, shown.output
    assert "wav:complete" in shown.output
    assert "audioWavUrl" in shown.output
