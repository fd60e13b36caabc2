"""The example app's ``/metrics`` page: Prometheus' text format, through OpenTelemetry's exporter.

A process's global meter provider is set once, and a test process also runs other files' tests
(tests/test_telemetry.py sets a provider of its own): each test of the example's provider runs the
app in a Python process of its own (:func:`run_host`), and reads exact figures from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from .conftest import example_config, instance

ROOT = Path(__file__).resolve().parents[2]

#: What every host process starts with: the example's configuration and instance folder from
#: its arguments, the page's text, and what OpenTelemetry logged (a refused provider, say).
PREAMBLE = """
import json, logging, sys
from example_app import create_app
from example_app.receivers import music
from flask_musiccallback.testing import CallbackClient

logged = []
handler = logging.Handler()
handler.emit = lambda record: logged.append(record.getMessage())
logging.getLogger("opentelemetry").addHandler(handler)

def build():
    return create_app(json.loads(sys.argv[1]), instance_path=sys.argv[2])

def scrape(app):
    answer = app.test_client().get("/metrics")
    assert answer.status_code == 200, answer.status
    return answer.get_data(as_text=True)

def report(**found):
    print(json.dumps({**found, "logged": logged}))
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def run_host(tmp_path: Path, body: str) -> dict[str, Any]:
    """Run ``body`` after :data:`PREAMBLE` in a new process, with the example's own provider
    (its default), and return what it reported."""
    config = example_config(
        tmp_path, "http://127.0.0.1:9", METRICS_PROVIDER=True, MUSICCALLBACK_ARCHIVE=None
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    script = PREAMBLE + textwrap.dedent(body)
    answer = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config), instance(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    found: dict[str, Any] = json.loads(answer.stdout.splitlines()[-1])
    return found


def samples(page: str) -> Samples:
    """Every sample on the page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(page: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        found
        for (sample, sample_labels), found in samples(page).items()
        if sample == name and set(labels.items()) <= sample_labels
    )


def test_the_page_answers_in_prometheus_text_format(example: Flask) -> None:
    answer = example.test_client().get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert list(text_string_to_metric_families(answer.get_data(as_text=True)))


def test_a_delivered_stage_is_counted_on_the_page(tmp_path: Path) -> None:
    found = run_host(
        tmp_path,
        """
        app = build()
        before = scrape(app)
        CallbackClient(app).deliver("complete", family="lyrics")
        music.close(app, timeout=10)
        report(before=before, after=scrape(app))
        """,
    )
    name = "example_stages_recorded_total"
    assert value(found["before"], name) == 0
    assert value(found["after"], name, family="lyrics", stage="complete") == 1
    assert value(found["after"], name, otel_scope_name="example_app") == 1


def test_every_app_of_the_process_shares_one_provider_set_once(tmp_path: Path) -> None:
    """create_app runs once per app; OpenTelemetry keeps the first provider set and refuses
    (with a warning) the next, so only the first call may make one."""
    found = run_host(
        tmp_path,
        """
        from opentelemetry import metrics
        from example_app import metrics as example_metrics

        first, second = build(), build()
        CallbackClient(second).deliver("complete", family="wav")
        music.close(first, timeout=10)
        music.close(second, timeout=10)
        report(
            global_is_ours=metrics.get_meter_provider() is example_metrics.install(),
            pages=[scrape(first), scrape(second)],
        )
        """,
    )
    assert found["global_is_ours"]
    assert not [line for line in found["logged"] if "Overriding" in line]
    for page in found["pages"]:
        # One reader, registered once: each family once, the stage counted on both pages.
        assert page.count("# TYPE target_info gauge") == 1
        assert value(page, "example_stages_recorded_total", family="wav") == 1


def test_a_provider_the_host_set_first_is_kept(tmp_path: Path) -> None:
    """opentelemetry-instrument, or a host's own setup, configures the process before the app
    exists: the app records into that provider, and does not try (and fail, with a warning) to
    replace it."""
    found = run_host(
        tmp_path,
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from example_app import metrics as example_metrics

        reader = InMemoryMetricReader()
        own = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(own)
        app = build()
        CallbackClient(app).deliver("complete", family="cover")
        music.close(app, timeout=10)
        report(
            kept=metrics.get_meter_provider() is own and example_metrics.install() is own,
            names=[
                metric.name
                for resource in reader.get_metrics_data().resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
            ],
        )
        """,
    )
    assert found["kept"]
    assert "example.stages.recorded" in found["names"]
    assert not [line for line in found["logged"] if "Overriding" in line]


def test_receiver_durations_are_bucketed_in_seconds(tmp_path: Path) -> None:
    """The SDK's default bounds are made for milliseconds; the app's view gives the receiver
    duration bounds a p95 in seconds can be read from (docs/operations.md charts it)."""
    found = run_host(
        tmp_path,
        """
        from opentelemetry import metrics

        app = build()
        duration = metrics.get_meter("flask_musiccallback").create_histogram(
            "musiccallback.dispatch.duration", unit="s"
        )
        duration.record(0.2, {"family": "cover", "stage": "complete"})
        report(page=scrape(app))
        """,
    )
    name = "musiccallback_dispatch_duration_seconds_bucket"
    for bound, count in (("0.1", 0), ("0.25", 1), ("+Inf", 1)):
        assert value(found["page"], name, le=bound, family="cover", stage="complete") == count
