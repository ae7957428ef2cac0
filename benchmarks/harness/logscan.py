"""Reading the servers' logs after the run: tracebacks, nginx error logs, the proxy's access
log. Everything is summarized (counted by kind); nothing is copied wholesale into the report."""

from __future__ import annotations

import json
import re
from collections import Counter

_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


def tracebacks(text: str) -> Counter[str]:
    """Each traceback block as `ExceptionType: message (at file:line in function)`, where the
    location is the innermost frame outside site-packages. A chained exception ("During
    handling of the above exception...") counts as a block of its own."""
    found: Counter[str] = Counter()
    where: str | None = None
    inside = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            inside, where = True, None
            continue
        if not inside:
            continue
        frame = _FRAME.match(line)
        if frame:
            path, number, function = frame.groups()
            if "site-packages" not in path and not path.startswith("/usr/lib"):
                where = f"{_short(path)}:{number} in {function}"
            continue
        if line.startswith((" ", "\t")) or not line.strip():
            continue
        exception = line.strip()[:160]
        found[f"{exception} (at {where})" if where else exception] += 1
        inside = False
    return found


def _short(path: str) -> str:
    for marker in ("/benchmarks/", "/proxy/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def nginx_errors(text: str) -> Counter[str]:
    """An nginx error log by message, without timestamps, pids and connection numbers."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip() or "[notice]" in line:
            continue
        parts = line.split("] ", 1)
        message = parts[1] if len(parts) == 2 else line
        message = message.split(", client:")[0]
        found[re.sub(r"^\d+#\d+: (\*\d+ )?", "", message)[:120]] += 1
    return found


def access_log(text: str) -> tuple[Counter[int], Counter[str]]:
    """The proxy's JSON access lines: counts per status, and per `status reason`."""
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            status = int(entry["status"])
        except (ValueError, KeyError, TypeError):
            continue
        statuses[status] += 1
        if entry.get("reason"):
            reasons[f"{status} {entry['reason']}"] += 1
    return statuses, reasons
