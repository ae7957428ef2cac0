"""The S3 engines behind the Storage seam, chosen by `s3.engine`; the rest of the proxy sees
only `Storage` (proxy/storage.py) and never knows which one runs.

- `builtin` (default, builtin.py): the proxy's own SigV4 signer and HTTP/1.1 keep-alive pool;
  botocore is off the per-request path.
- `aiobotocore` (aiobotocore.py): one aiobotocore client per process.

Both presign with presign.py and map S3's answers to the same errors.
"""

from __future__ import annotations

from typing import Protocol

from ..config import S3Settings
from ..storage import Storage
from .aiobotocore import AiobotocoreStorage
from .builtin import BuiltinStorage


class Engine(Storage, Protocol):
    """A Storage that holds connections: opened before serving, closed after."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def has_credentials(self) -> bool: ...

    def pool_load(self) -> tuple[int, int]:
        """(S3 connections in use, requests waiting for one), for the metrics."""
        ...


def create_engine(settings: S3Settings) -> Engine:
    """The engine `s3.engine` names, not yet opened."""
    if settings.engine == "aiobotocore":
        return AiobotocoreStorage(settings)
    return BuiltinStorage(settings)
