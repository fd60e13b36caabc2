"""The example app's ``/metrics`` page: Prometheus' text format, through OpenTelemetry's exporter.

The provider is one per process, shared by every app a test builds: each test reads how a figure
changed across what it did, not its value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flask import Flask
from opentelemetry import metrics as otel_metrics
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from example_app import metrics
from flask_musiccallback.testing import CallbackClient

from .conftest import ExampleFactory, example_config, instance

ROOT = Path(__file__).resolve().parents[2]

#: A host process that sets its own provider before building the app, then delivers a stage.
HOST_WITH_A_PROVIDER = """
import json, logging, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
own = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(own)
logged = []
handler = logging.Handler()
handler.emit = lambda record: logged.append(record.getMessage())
logging.getLogger("opentelemetry").addHandler(handler)

from example_app import create_app
from example_app import metrics as example_metrics
from example_app.receivers import music
from flask_musiccallback.testing import CallbackClient

app = create_app(json.loads(sys.argv[1]), instance_path=sys.argv[2])
CallbackClient(app).deliver("complete", family="cover")
music.close(app, timeout=10)
names = [
    metric.name
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
]
print(json.dumps({
    "kept": metrics.get_meter_provider() is own and example_metrics.install() is own,
    "names": names,
    "logged": logged,
}))
"""


def scrape(app: Flask) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on the page, by name and labels."""
    answer = app.test_client().get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.get_data(as_text=True))
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        found
        for (sample, sample_labels), found in samples.items()
        if sample == name and set(labels.items()) <= sample_labels
    )


def test_the_page_answers_in_prometheus_text_format(example: Flask) -> None:
    answer = example.test_client().get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert list(text_string_to_metric_families(answer.get_data(as_text=True)))


def test_a_delivered_stage_is_counted_on_the_page(example: Flask, deliver: CallbackClient) -> None:
    name = "example_stages_recorded_total"
    before = value(scrape(example), name, family="lyrics", stage="complete")
    assert deliver.deliver("complete", family="lyrics").json == {"status": "received"}
    after = scrape(example)
    assert value(after, name, family="lyrics", stage="complete") == before + 1
    assert value(after, name, family="lyrics", stage="complete", otel_scope_name="example_app")


def test_every_app_of_the_process_serves_the_one_global_provider(
    make_example: ExampleFactory,
) -> None:
    """create_app runs once per app; OpenTelemetry keeps the first provider set and refuses
    the next, so only the first call may make one."""
    first, second = make_example(), make_example()
    assert metrics.install() is metrics.install()
    assert otel_metrics.get_meter_provider() is metrics.install(), (
        "another test of this process set the global MeterProvider before the example app did"
    )
    CallbackClient(second).deliver("complete", family="wav")
    for app in (first, second):
        page = app.test_client().get("/metrics").get_data(as_text=True)
        # One reader, registered once: each family once, and the stage counted on both pages.
        assert page.count("# TYPE target_info gauge") == 1
        assert 'family="wav"' in page


def test_a_provider_the_host_set_first_is_kept(tmp_path: Path) -> None:
    """opentelemetry-instrument, or a host's own setup, configures the process before the app
    exists: the app records into that provider, and does not try (and fail, with a warning) to
    replace it. A process of its own, since a process's provider is set once."""
    config = example_config(tmp_path, "http://127.0.0.1:9", MUSICCALLBACK_ARCHIVE=None)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    answer = subprocess.run(
        [sys.executable, "-c", HOST_WITH_A_PROVIDER, json.dumps(config), instance(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    found = json.loads(answer.stdout.splitlines()[-1])
    assert found["kept"]
    assert "example.stages.recorded" in found["names"]
    assert not [line for line in found["logged"] if "Overriding" in line]


def test_receiver_durations_are_bucketed_in_seconds(example: Flask) -> None:
    """The SDK's default bounds are made for milliseconds; the app's view gives the receiver
    duration bounds a p95 in seconds can be read from (docs/operations.md charts it)."""
    duration = otel_metrics.get_meter("flask_musiccallback").create_histogram(
        "musiccallback.dispatch.duration", unit="s"
    )
    name = "musiccallback_dispatch_duration_seconds_bucket"
    labels = {"family": "cover", "stage": "complete"}
    before = scrape(example)
    duration.record(0.2, labels)
    after = scrape(example)
    for bound, added in (("0.1", 0), ("0.25", 1), ("+Inf", 1)):
        grew = value(after, name, le=bound, **labels) - value(before, name, le=bound, **labels)
        assert grew == added, bound
