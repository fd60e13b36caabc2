"""Sphinx configuration: the Markdown pages of docs/ (MyST) and the API reference (autodoc)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx

project = "flask-musiccallback"
release = importlib.metadata.version("flask-musiccallback")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# README.md is the index GitHub shows for docs/; index.md includes it as the site's home page.
exclude_patterns = ["_build", "README.md"]

# Anchors for headings of the first three levels, named as GitHub names them, so that links such
# as ``stores.md#leases-a-crash-never-blocks-a-task`` work on both.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
add_module_names = False

html_theme = "furo"
html_title = f"flask-musiccallback {release}"

# The build runs offline, so there is no intersphinx: a type of the standard library or of a
# dependency in a signature stays unlinked text rather than a broken reference. Names imported
# only for type checking (``if TYPE_CHECKING:``) reach Sphinx bare.
nitpick_ignore_regex = [
    ("py:.*", r"(collections\.abc|datetime|blinker|flask|marshmallow|werkzeug)\..*"),
    ("py:class", r"Flask|FlaskClient|TestResponse"),
]
nitpick_ignore = [
    # The type variable of MusicCallback.on: a decorator returns what it was given.
    ("py:class", "flask_musiccallback.extension.F"),
]


ROOT = Path(__file__).resolve().parent.parent

#: Markdown files outside docs/ that a page of the site includes whole. MyST reads a link to a
#: Markdown file as a link to a page; a link to one of these, from a page that GitHub shows too,
#: goes to the page that includes it.
INCLUDED = {"CHANGES.md": "changes"}


def link_included_files(app: Sphinx, doctree: nodes.document) -> None:
    for node in doctree.findall(addnodes.pending_xref):
        if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
            continue
        target = Path(app.srcdir, node["reftarget"] + ".md").resolve()
        if target.is_relative_to(ROOT):
            page = INCLUDED.get(target.relative_to(ROOT).as_posix())
            if page is not None:
                node["reftarget"] = page


def setup(app: Sphinx) -> None:
    app.connect("doctree-read", link_included_files)
