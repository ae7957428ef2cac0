"""`--baseline REF`: another commit's proxy, built once into its own directory and venv, so the
run can measure it beside the checkout's proxy (same peers, same backend, runs alternated).

REF's tree is taken with `git archive` (no worktree to clean up, uncommitted changes of the
checkout never leak into it) and installed into a venv of its own, so REF runs with the
dependencies its own pyproject.toml asked for. Both are kept in a cache keyed by the commit:
a second run against the same REF starts at once.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .procs import run_command


class BaselineError(Exception):
    """REF could not be resolved or built; the message says which step failed and why."""


@dataclass(frozen=True)
class Baseline:
    ref: str  # as given on the command line
    commit: str  # the full hash it resolved to
    root: Path  # REF's source tree (the baseline proxy runs with this as its working dir)
    python: Path  # REF's own venv

    @property
    def label(self) -> str:
        short = self.commit[:10]
        return short if self.ref in (short, self.commit) else f"{short} ({self.ref})"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s3-private-proxy-bench"


def resolve(repo: Path, ref: str) -> str:
    done = run_command(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        timeout=30,
    )
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        raise BaselineError(f"--baseline {ref}: not a commit in {repo}")
    return commit


def build(repo: Path, ref: str, cache: Path, log: Callable[[str], None]) -> Baseline:
    """REF's tree and venv, from the cache or made now (a minute or two: pip installs REF's
    dependencies, from pip's own cache when it has them)."""
    commit = resolve(repo, ref)
    home = cache / commit
    root, python = home / "src", home / "venv" / "bin" / "python"
    ready = home / ".ready"
    if ready.exists() and python.exists():
        log(f"baseline {commit[:10]}: reusing {home}")
        return Baseline(ref, commit, root, python)
    shutil.rmtree(home, ignore_errors=True)
    root.mkdir(parents=True)
    log(f"baseline {commit[:10]}: extracting the tree into {root}")
    archive = _git_archive(repo, commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    log(f"baseline {commit[:10]}: creating its venv and installing it (pip)")
    _step(run_command([sys.executable, "-m", "venv", str(home / "venv")], timeout=300), "venv")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _step(run_command([*pip, str(root)], timeout=1800), "pip install")
    ready.write_text(commit + "\n")
    return Baseline(ref, commit, root, python)


def _git_archive(repo: Path, commit: str) -> bytes:
    done = subprocess.run(  # noqa: S603 - argv built here, never a shell string
        ["git", "-C", str(repo), "archive", "--format=tar", commit],  # noqa: S607
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BaselineError(f"git archive {commit[:10]}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def _step(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise BaselineError(f"baseline {what} failed: {output[-800:]}")
