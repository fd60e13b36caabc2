"""The example app's page in a real browser: Debian's headless Chromium, driven by Selenium.

The app runs on a real server on 127.0.0.1 (conftest.py); the task is simulated over HTTP while
the page is open, so the page must show it by itself, with working players. The whole way of a
simulated task's media is taken: the simulator links them to the app's samples, the archive fetches
them from the app over 127.0.0.1, and the page plays the archived copies from ``/media/``. Without
``chromium`` and ``chromedriver`` the test skips, or fails under ``CI=true`` (``scripts/test.sh``
installs them).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..servers import missing
from .conftest import ExampleFactory, base_url, settle

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

HOW = "apt-get install chromium chromium-driver (scripts/test.sh does)"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1600",
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing("chromium and chromedriver", HOW)
    if importlib.util.find_spec("selenium") is None:
        missing("selenium", "pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="example-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        try:
            yield driver
        finally:
            driver.quit()


PLAYERS = """
return [...document.querySelectorAll('audio')].map(audio => ({
  src: audio.currentSrc, ready: audio.readyState, duration: audio.duration,
  title: audio.closest('.track').querySelector('.track__title').textContent,
}));
"""

COVERS = """
return [...document.querySelectorAll('img.track__cover')]
  .map(image => image.complete && image.naturalWidth > 0 && image.src.includes('/media/'));
"""


def test_a_simulated_task_appears_on_the_open_page_with_tracks_and_players(
    make_example: ExampleFactory, browser: WebDriver
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    app = make_example(PAGE_REFRESH_SECONDS=0.2)
    base = base_url(app)
    browser.get(f"{base}/")
    assert "No task yet" in browser.page_source
    browser.execute_script("window.notReloaded = true;")

    result = app.test_cli_runner().invoke(
        args=[
            "musiccallback",
            "simulate",
            "--task-id",
            "browser-1",
            "--url",
            f"{base}/music-callback",
        ],
    )
    assert result.exit_code == 0, result.output
    settle(app)

    def players_ready(driver: Any) -> list[dict[str, Any]] | None:
        players: list[dict[str, Any]] = driver.execute_script(PLAYERS)
        local = [p for p in players if "/media/" in p["src"] and p["ready"] >= 1]
        return players if len(players) == 2 and len(local) == 2 else None

    players = WebDriverWait(browser, 20, poll_frequency=0.1).until(players_ready)
    covers = WebDriverWait(browser, 10, poll_frequency=0.1).until(
        lambda driver: (c := driver.execute_script(COVERS)) and all(c) and c
    )

    assert [player["title"] for player in players] == ["Neon Harbor", "Paper Satellites"]
    assert all(player["duration"] > 1 for player in players)
    assert len(covers) == 2
    status = browser.find_element("css selector", "[data-task='browser-1'] .status")
    assert status.text == "Complete"
    steps = browser.find_elements("css selector", "[data-task='browser-1'] .step__name")
    assert [step.text for step in steps] == ["Text", "First track", "Complete"]
    assert browser.execute_script("return window.notReloaded") is True


def test_the_page_redraws_only_the_tasks_that_change(
    make_example: ExampleFactory, browser: WebDriver
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    app = make_example(PAGE_REFRESH_SECONDS=0.2)
    runner = app.test_cli_runner()
    base = base_url(app)
    url = f"{base}/music-callback"
    runner.invoke(args=["musiccallback", "simulate", "--task-id", "done", "--url", url])
    settle(app)
    browser.get(f"{base}/")
    browser.execute_script(
        "document.querySelector(\"[data-task='done']\").dataset.untouched = 'yes';"
    )

    for stage in ("text", "first"):
        runner.invoke(
            args=[
                "musiccallback",
                "simulate",
                "--stage",
                stage,
                "--task-id",
                "new",
                "--url",
                url,
            ]
        )
        settle(app)
        WebDriverWait(browser, 10, poll_frequency=0.1).until(
            lambda driver, stage=stage: (
                driver.execute_script(
                    "const s = document.querySelectorAll(\"[data-task='new'] "
                    '.step:not(.step--waiting) .step__name");'
                    "return s.length && s[s.length - 1].textContent;"
                )
                == {"text": "Text", "first": "First track"}[stage]
            )
        )

    order = browser.execute_script(
        "return [...document.querySelectorAll('article.task')].map(a => a.dataset.task);"
    )
    assert order == ["new", "done"]
    assert (
        browser.execute_script(
            "return document.querySelector(\"[data-task='done']\").dataset.untouched;"
        )
        == "yes"
    )
    # Read in one script: the archive's record of the first track's media redraws the task once
    # more, which may come between finding an element and reading it.
    status = browser.execute_script(
        "return document.querySelector(\"[data-task='new'] .status\").innerText.trim();"
    )
    assert status == "First track ready"


#: What the page shows of every family's task, read in the browser.
RESULTS = """
const within = (task, selector) =>
  [...document.querySelectorAll(`[data-task='browser-${task}'] ${selector}`)];
const player = (media) => ({
  label: media.getAttribute('aria-label'), ready: media.readyState, duration: media.duration,
  width: media.videoWidth, src: media.currentSrc,
});
within('cover', 'img.cover-image').forEach((image) => image.scrollIntoView());
return {
  lyrics: within('lyrics', '.lyrics__text').map((text) => text.innerText),
  wav: within('wav', 'audio').map(player),
  stems: within('stems', 'audio').map(player),
  video: within('video', 'video').map(player),
  covers: within('cover', 'img.cover-image').map((image) =>
    image.complete && image.naturalWidth > 0 && image.src.includes('/media/')),
  notes: within('midi', 'a[download]').map((link) => link.getAttribute('href')),
  midi: within('midi', '.midi__count').map((cell) => cell.textContent),
  phrase: within('voice', '.voice__phrase').map((quote) => quote.innerText),
  voice: within('voice', '.voice__id').map((code) => code.textContent),
};
"""


def test_a_task_of_every_family_appears_on_the_open_page_as_a_person_would_want_it(
    make_example: ExampleFactory, browser: WebDriver
) -> None:
    """Every player and image plays the archived copy of the family's media."""
    from selenium.webdriver.support.ui import WebDriverWait

    app = make_example(PAGE_REFRESH_SECONDS=0.2)
    runner = app.test_cli_runner()
    base = base_url(app)
    browser.get(f"{base}/")
    browser.execute_script("window.notReloaded = true;")

    def simulate(family: str, stage: str) -> None:
        result = runner.invoke(
            args=[
                "musiccallback",
                "simulate",
                "--family",
                family,
                "--stage",
                stage,
                "--task-id",
                f"browser-{family}",
                "--url",
                f"{base}/music-callback",
            ]
        )
        assert result.exit_code == 0, result.output

    for family in ("lyrics", "wav", "stems", "midi", "video", "cover"):
        simulate(family, "complete")
    simulate("voice", "phrase")
    settle(app)

    def shown(driver: Any) -> dict[str, Any] | None:
        results: dict[str, Any] = driver.execute_script(RESULTS)
        players = results["wav"] + results["stems"] + results["video"]
        loaded = (
            len(results["lyrics"]) == 2
            and len(results["stems"]) == 2
            and len(players) == 4
            and all(p["ready"] >= 1 and "/media/" in p["src"] for p in players)
            and len(results["covers"]) == 2
            and all(results["covers"])
            and results["midi"]
            and results["phrase"]
        )
        return results if loaded else None

    results = WebDriverWait(browser, 20, poll_frequency=0.1).until(shown)

    assert results["lyrics"][0].startswith("[Verse]\nCity lights on the river\n[Chorus]")
    assert browser.find_element(
        "css selector", "[data-task='browser-lyrics'] .lyrics__text"
    ).is_displayed()
    assert [p["label"] for p in results["stems"]] == ["Vocal", "Instrumental"]
    assert all(p["duration"] > 1 for p in results["wav"] + results["stems"])
    [video] = results["video"]
    assert video["width"] == 160  # the sample video's picture was decoded
    assert results["midi"] == ["8", "8", "16"]  # two instruments, then the total
    [notes] = results["notes"]
    assert notes.startswith("/media/browser-midi/midi/")
    assert results["phrase"] == ["Neon rain on an empty street, sing it slow."]
    assert results["voice"] == []

    simulate("voice", "complete")
    settle(app)
    voice = WebDriverWait(browser, 10, poll_frequency=0.1).until(
        lambda driver: driver.execute_script(RESULTS)["voice"]
    )
    assert voice[0].startswith("voice_")
    assert browser.find_element("css selector", "[data-task='browser-voice'] .status").text == (
        "Complete"
    )
    assert browser.execute_script("return window.notReloaded") is True


def test_a_task_submitted_with_the_form_appears_and_is_called_back(
    make_example: ExampleFactory, browser: WebDriver
) -> None:
    """The example chosen fills in the form; the fake provider calls the task back while the
    page is open."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    app = make_example(PAGE_REFRESH_SECONDS=0.2, FAKE_PROVIDER_SECONDS=0.2)
    browser.get(f"{base_url(app)}/")

    Select(browser.find_element("id", "submit-example")).select_by_value("lyrics")
    assert browser.find_element("id", "submit-path").get_attribute("value") == "/api/v1/lyrics"
    assert "the sea at night" in (
        browser.find_element("id", "submit-payload").get_attribute("value") or ""
    )
    browser.find_element("css selector", ".submit__form button").click()

    done = WebDriverWait(browser, 10, poll_frequency=0.1).until(
        lambda driver: driver.find_elements("css selector", ".submit__done code")
    )
    task_id = done[0].text
    texts = WebDriverWait(browser, 20, poll_frequency=0.1).until(
        lambda driver: driver.find_elements(
            "css selector", f"[data-task='{task_id}'] .lyrics__text"
        )
    )
    assert len(texts) == 2
    assert texts[0].text.startswith("[Verse]")
    status = browser.execute_script(
        f"return document.querySelector(\"[data-task='{task_id}'] .status\").innerText.trim();"
    )
    assert status == "Complete"
    settle(app)
