"""The docs stay true: every config key the model accepts is in docs/configuration.md and
every key documented there exists; the README stays a front door and its links resolve."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from proxy.config import Settings
from proxy.ops.metrics import CACHES, S3_OPERATIONS, S3_OUTCOMES, TOKEN_OUTCOMES

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


# Values for the ${VAR}s the examples use, as an operator would export them.
_EXAMPLE_ENV = {
    "JWT_SECRET": "j" * 64,
    "JOBS_SECRET": "o" * 64,
    "LINK_SECRET": "l" * 64,
    "SESSION_SECRET": "s" * 64,
    "OIDC_CLIENT_SECRET": "client-secret",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}
# What an example is checked inside of: most show a section or two, not a whole config.
_AROUND_A_FRAGMENT = {
    "auth": {"secret": "${JWT_SECRET}"},
    "routes": [
        {
            "name": "any",
            "match": "/any/{path:.+}",
            "bucket": "any-bucket",
            "key": "{path}",
            "delivery": "stream",
            "access": "public",
        }
    ],
}


class _NoDuplicateKeys(yaml.SafeLoader):
    """An example that sets a key twice shows one setting and means another."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicated = {key for key in keys if keys.count(key) > 1}
        assert not duplicated, f"key {sorted(duplicated)[0]!r} set twice at {node.start_mark}"
        return super().construct_mapping(node, deep=deep)


def config_examples() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(page, text, config) for each YAML example in the docs whose top-level keys are all
    config sections (the others are access rules, route fragments, Kubernetes probes)."""
    sections = set(Settings.model_fields)
    for page in (REPO / "README.md", *sorted(DOCS.glob("*.md"))):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            documents = list(yaml.safe_load_all(block))
            if not any(isinstance(d, dict) and set(d) <= sections for d in documents):
                continue  # (an access rules block lists alternatives of one key)
            for document in yaml.load_all(block, Loader=_NoDuplicateKeys):
                yield page.name, block, document


def test_every_config_example_in_the_docs_passes_check() -> None:
    """Each inside a minimal config around it (a section it sets replaces that one's)."""
    from proxy.config import ConfigError, parse_config

    checked = 0
    for page, text, document in config_examples():
        whole = {**_AROUND_A_FRAGMENT, **document}
        try:
            parse_config(yaml.safe_dump(whole), env=_EXAMPLE_ENV)
        except ConfigError as exc:
            pytest.fail(f"{page}: this example fails `check`:\n{text}\n{exc}")
        checked += 1
    assert checked >= 9, "fewer config examples found than the docs hold: is the parser right?"


def test_the_configuration_reference_example_passes_check_as_written(tmp_path: Path) -> None:
    import subprocess
    import sys

    text = (DOCS / "configuration.md").read_text().split("### Example", 1)[1]
    config = tmp_path / "config.yaml"
    config.write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "JWT_SECRET": _EXAMPLE_ENV["JWT_SECRET"]},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK, 2 routes" in result.stdout


@pytest.mark.parametrize(
    ("series", "values"),
    [
        ("proxy_s3_requests_total", (*S3_OPERATIONS, *S3_OUTCOMES)),
        ("proxy_token_verifications_total", TOKEN_OUTCOMES),
        ("proxy_cache_hits_total", CACHES),
    ],
)
def test_every_label_value_of_a_series_is_documented(series: str, values: tuple[str, ...]) -> None:
    row = next(
        line
        for line in (DOCS / "operations.md").read_text().splitlines()
        if line.startswith(f"| `{series}` |")
    )
    missing = [value for value in values if f"`{value}`" not in row]
    assert not missing, f"docs/operations.md, {series}: add {missing}"


def test_shipped_configs_point_at_the_configuration_reference() -> None:
    """config.yaml and every manifest that carries a config say where each key is explained
    (the README's reference moved to docs/configuration.md)."""
    shipped = [REPO / "config.yaml"]
    shipped += [
        path
        for path in (REPO / "deploy").rglob("*.yaml")
        if path.name == "config.yaml" or "config.yaml: |" in path.read_text()
    ]
    assert len(shipped) >= 2
    for path in shipped:
        text = path.read_text()
        assert "docs/configuration.md" in text, f"{path.relative_to(REPO)}: name the reference"
        assert "Config reference" not in text, f"{path.relative_to(REPO)}: the README has none"
