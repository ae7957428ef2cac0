"""What `pip install .` (the container's install) ships: every subpackage and the demo's
static files. An editable install finds modules on disk, so only this check catches a
subpackage left out of pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "proxy").rglob("__init__.py")
    }
    assert listed == on_disk
