"""The documentation covers the public API: every name of ``__all__`` in the API reference, and
every configuration key in the configuration guide. The site's build (``.ci/run``) checks that
what is there renders and that its references resolve; these check that nothing is left out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import flask_musiccallback
from flask_musiccallback import signals
from flask_musiccallback.config import DEFAULTS

DOCS = Path(__file__).parent.parent / "docs"


def documented_objects() -> set[str]:
    """The dotted paths docs/api.md names in its autodoc directives."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\.\. auto\w+:: (\S+)$", text, re.MULTILINE))


@pytest.mark.parametrize("name", flask_musiccallback.__all__)
def test_the_api_reference_documents_every_public_name(name: str) -> None:
    # Documented where it is defined, so that its docstring's relative references (and a
    # signal's ``#:`` comment) are found; the page says to import it from the package.
    if name in signals.__all__:
        path = f"flask_musiccallback.signals.{name}"
    else:
        obj = getattr(flask_musiccallback, name)
        path = f"{obj.__module__}.{obj.__qualname__}"

    assert path in documented_objects()


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_the_configuration_guide_documents_every_key(key: str) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")

    assert f"### `{key}`" in text
    assert f"[`{key}`](#{key.lower()})" in text
