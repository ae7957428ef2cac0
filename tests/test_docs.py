"""The docs stay true: every config key the model accepts is in docs/configuration.md and
every key documented there exists; the README stays a front door and its links resolve."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from proxy.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
_SECTION = re.compile(r"^###\s+`([a-z0-9_.]+)`\s*$")
_ROW_KEY = re.compile(r"^\|\s*`([a-z0-9_.]+)`\s*\|")


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def model_keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[str]:
    """Every key path the config accepts; list items as their parent (`routes.name`)."""
    for name, field in model.model_fields.items():
        path = prefix + name
        yield path
        for inner in _models(field.annotation):
            yield from model_keys(inner, path + ".")


def documented_keys() -> set[str]:
    """Key paths from the reference's tables: `### \\`section\\`` then `| \\`key\\` | ...`."""
    found: set[str] = set()
    section = None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("#"):
            heading = _SECTION.match(line)
            section = heading.group(1) if heading else None
            if section:
                found.add(section)
            continue
        row = _ROW_KEY.match(line)
        if section and row:
            found.add(f"{section}.{row.group(1)}")
    return found


def test_every_config_key_is_documented() -> None:
    documented = documented_keys()
    tops = set(Settings.model_fields)

    def covered(path: str) -> bool:
        """Documented itself, as part of a documented parent (`cors: {origins, ...}`), or
        through documented children (`jwks.cache_ttl` documents `jwks`)."""
        parts = path.split(".")
        ancestors = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        if (ancestors - tops) & documented or path in documented:
            return True
        return any(key.startswith(path + ".") for key in documented)

    missing = [path for path in model_keys() if not covered(path)]
    assert not missing, f"add these keys to docs/configuration.md: {missing}"


def test_every_documented_key_exists() -> None:
    real = set(model_keys())
    stray = sorted(documented_keys() - real)
    assert not stray, f"docs/configuration.md documents keys the config refuses: {stray}"


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(page: str) -> None:
    source = REPO / page
    for target in _links(source):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (source.parent / target).exists(), f"{page} links to missing {target}"


def _slug(title: str) -> str:
    """A heading's anchor as GitHub renders it."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in path.read_text().splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            slug = _slug(heading.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_anchors_name_headings(page: str) -> None:
    source = REPO / page
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", source.read_text()):
        if "://" in target:
            continue
        path = (source.parent / target) if target else source
        assert anchor in _anchors(path), f"{page}: no heading #{anchor} in {path.name}"


def test_the_readme_is_a_front_door() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "keep the README short; the reference is in docs/"
    linked = {Path(target).name for target in _links(REPO / "README.md")}
    pages = {page.name for page in DOCS.glob("*.md")}
    assert pages <= linked, f"the README does not link to {sorted(pages - linked)}"
    for command in ("./scripts/demo.sh", "./scripts/test.sh"):
        assert command in readme


def test_the_module_map_names_every_module() -> None:
    """docs/development.md lists each module and subpackage of proxy/."""
    text = (DOCS / "development.md").read_text()
    package = REPO / "proxy"
    names = [p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    names += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()]
    missing = [name for name in names if name not in text]
    assert not missing, f"add to docs/development.md: {missing}"


def test_the_readmes_minimal_config_loads() -> None:
    from proxy.config import parse_config

    readme = (REPO / "README.md").read_text()
    block = readme.split("## A minimal config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(block, env={"JWT_SECRET": "s" * 64})
    assert [route.name for route in config.routes] == [
        "employee-photos",
        "my-files",
        "admin-exports",
    ]
