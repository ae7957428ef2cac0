"""Start an npm S3 server (s3rver 3 or @20minutes/s3rver 5) on loopback for a test module:
wait for its "listening on" line, hand back its endpoint and a client with its fixed keys,
and stop it afterwards."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

KEY = "S3RVER"  # both servers' built-in access key and secret


@contextmanager
def running_node_s3(command: list[str], log: Path) -> Iterator[tuple[str, Any]]:
    """(endpoint, boto3 client) while `command` runs; its output goes to `log`."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())):
            assert process.poll() is None, f"s3rver exited: {log.read_text()}"
            assert time.monotonic() < deadline, "s3rver did not start"
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{found.group(1)}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY,
            aws_secret_access_key=KEY,
        )
        yield endpoint, client
    finally:
        process.terminate()
        process.wait(timeout=10)
