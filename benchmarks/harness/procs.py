"""Server processes: start pinned, wait until they accept, read CPU time and memory from /proc,
stop them (the whole process group) without fail."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class ServerError(Exception):
    """A server would not start, or died; the message carries the tail of its stderr."""


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Every short-lived subprocess goes through here: list argv, no shell, always bounded."""
    return subprocess.run(  # noqa: S603 - argv is built by the harness, never a shell string
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        check=False,
    )


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (nginx workers, forked proxy workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of the live tree, plus cutime+cstime (children that exited and were reaped)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # after "comm": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLOCK_TICKS


def steal_seconds(cpu: int) -> float:
    """Time the hypervisor took from `cpu` (the "steal" column of /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = line.split()[1:]
            return int(values[7]) / CLOCK_TICKS if len(values) > 7 else 0.0
    return 0.0


_PF_KTHREAD = 0x00200000


def other_processes(exclude_root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every user-space process outside `exclude_root`'s tree (kernel
    threads left out: they do the servers' network work), by PID, with its name."""
    mine = set(process_tree(exclude_root))
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[6]) & _PF_KTHREAD:
            continue
        found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def busiest_others(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> list[tuple[str, float]]:
    """CPU seconds used between two `other_processes` snapshots, by process name, largest
    first (a process that started in between counts from zero)."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        delta = seconds - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            used[name] = used.get(name, 0.0) + delta
    return sorted(used.items(), key=lambda item: -item[1])


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in process_tree(root))


def tree_hwm_kib(root: int) -> int:
    """Peak RSS (VmHWM) summed over the tree: exact for one process, an upper bound for several."""
    return sum(_status_kib(pid, "VmHWM") for pid in process_tree(root))


@dataclass
class Server:
    """One server under test (or the backend), started in its own process group."""

    name: str
    argv: list[str]
    port: int
    cpus: str  # taskset list, e.g. "0" or "0,1"
    log_dir: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    ready_timeout: float = 20.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.name}: not started")
        return self.process.pid

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.err"

    def start(self, taskset: str) -> None:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            # taskset execs the server, so the PID is the server's own.
            self.process = subprocess.Popen(  # noqa: S603 - argv built by the harness
                [taskset, "-c", self.cpus, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() ends the whole tree
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if _exited(self.process.pid):
                status = self.exit_status()
                self.stop()
                raise ServerError(
                    f"{self.name} exited with status {status} at start-up: {self.stderr_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not accept connections within {self.ready_timeout}s")

    def alive(self) -> bool:
        return self.process is not None and not _exited(self.process.pid)

    def exit_status(self) -> int | None:
        """The exit status once the server has stopped (it is reaped only by stop())."""
        if self.process is None:
            return None
        if self.process.returncode is not None:
            return self.process.returncode
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return None
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return tree_rss_kib(self.pid)

    def hwm_kib(self) -> int:
        return tree_hwm_kib(self.pid)

    def stderr_tail(self, lines: int = 12) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no stderr)"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) if tail else "(empty stderr)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds.

        The leader is reaped only at the very end: while it is unreaped its PID (the group id)
        cannot be reused, so the signals reach this server's processes and nothing else.
        Safe to call twice."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _exited(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers: a worker, a stuck leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return True
    return info is not None
