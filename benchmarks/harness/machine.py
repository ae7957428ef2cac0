"""Facts about the machine and the software measured, for the top of the report."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .procs import run_command


def _cpuinfo() -> tuple[str, bool]:
    model, virtual = "unknown", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            if key.strip() == "flags" and "hypervisor" in value.split():
                virtual = True
    except OSError:
        pass
    return model, virtual


def _meminfo_mib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory_mib() -> int:
    return _meminfo_mib("MemAvailable")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str]) -> str:
    try:
        done = run_command(argv, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _governor() -> str | None:
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def proxy_source(root: Path) -> str:
    try:
        head = run_command(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], timeout=10)
        dirty = run_command(
            ["git", "-C", str(root), "status", "--porcelain", "--", "proxy"], timeout=10
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"
    if head.returncode != 0:
        return "not a git checkout"
    state = f"{len(dirty)} uncommitted change(s) in proxy/" if dirty else "clean proxy/"
    return f"commit {head.stdout.strip()}, {state}"


def proxy_fingerprint(root: Path) -> str:
    """A digest of the proxy's source files, to notice edits made while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted((root / "proxy").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()[:12]


def facts(root: Path, nginx: str, wrk: str, cpus: list[int]) -> list[tuple[str, str]]:
    model, virtual = _cpuinfo()
    uvloop = _version("uvloop")
    if uvloop == "not installed":
        uvloop += " (the proxy and the aiohttp peers run on asyncio's default loop)"
    else:
        uvloop += " (the proxy and the aiohttp peers run on it)"
    rows = [
        ("CPUs (nproc)", f"{len(cpus)} usable ({os.cpu_count()} online): {cpus}"),
        ("CPU model", model + (" (virtual machine: hypervisor flag set)" if virtual else "")),
        ("memory", f"{_meminfo_mib('MemTotal'):,} MiB"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("aiohttp", _version("aiohttp")),
        ("aiobotocore / botocore", f"{_version('aiobotocore')} / {_version('botocore')}"),
        ("uvloop", uvloop),
        ("PyJWT", _version("PyJWT")),
        ("nginx", _first_line([nginx, "-v"]).removeprefix("nginx version: ")),
        ("wrk", _first_line([wrk, "-v"]).split(" [")[0]),
        ("proxy source", proxy_source(root)),
    ]
    governor = _governor()
    if governor:
        rows.append(("CPU frequency governor", governor))
    return rows
