"""What a user's ``pip install`` puts into site-packages: the package, and nothing else, at the
version pyproject.toml gives. scripts/check-package.sh checks the built wheel and sdist further."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flask_musiccallback

ROOT = Path(flask_musiccallback.__file__).parent.parent


def test_the_wheel_ships_the_package_only(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "instance", "build", "dist", "_build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }

    assert top_level == {"flask_musiccallback"}
    assert "flask_musiccallback/py.typed" in names
    assert {
        f"flask_musiccallback/stores/sqlalchemy/{module}.py"
        for module in ("__init__", "table", "engine", "statements", "driver", "store")
    } <= set(names)


def test_the_version_is_written_once() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    assert flask_musiccallback.__version__ == project["version"]
