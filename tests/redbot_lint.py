"""Run REDbot (the HTTP linter) on one loopback URL; print its notes as JSON lines.

Usage: python tests/redbot_lint.py URL [METHOD] [HEADER: VALUE ...] < BODY

The request body, if any, is read from standard input.

A separate process because REDbot runs its own event loop (thor) with global state. It may
only connect to 127.0.0.1: any other address is refused before a byte is sent.
"""

from __future__ import annotations

import json
import sys
from configparser import ConfigParser
from typing import Any

import thor
from redbot.resource import HttpResource
from redbot.resource.fetch import RedFetcher


def _only_loopback(address: str) -> bool:
    return address == "127.0.0.1"


def _notes(resource: Any) -> list[dict[str, str]]:
    found = []
    for note in resource.response.notes:
        for each in (note, *getattr(note, "subnotes", [])):
            found.append(
                {
                    "id": type(each).__name__,
                    "level": each.level.value if each.level else "",
                    "summary": str(each.summary),
                }
            )
    return found


def main(argv: list[str]) -> int:
    url, method, *header_lines = argv
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit("REDbot may only check http://127.0.0.1")
    RedFetcher.client.check_ip = _only_loopback
    config = ConfigParser()
    config.read_dict({"redbot": {"enable_local_access": "True"}})
    resource = HttpResource(config["redbot"], descend=False)
    headers = [tuple(line.split(": ", 1)) for line in header_lines]
    body = sys.stdin.buffer.read()
    resource.set_request(url, method=method, headers=headers, content=body)  # type: ignore[arg-type]

    @thor.events.on(resource)
    def check_done() -> None:
        thor.stop()

    resource.check()
    thor.run()
    if resource.fetch_error is not None:
        print(json.dumps({"fetch_error": str(resource.fetch_error.desc)}))
        return 1
    print(json.dumps({"status": resource.response.status_code, "notes": _notes(resource)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
