"""The last known discovery state on disk, so a proxy restarted while the control plane
is down starts routing at once (static stability across restarts).

The file holds the objects the proxy follows (Services, Endpoints, keyed
``resource -> "namespace/name" -> object``), the API server they came from and the
wall-clock time they were last known current. It is written atomically: a temporary
file in the same directory, flushed and fsynced, then renamed over the old one, so a
crash mid-write leaves the previous file whole. A file that cannot be read, is not
valid JSON or is from another API server is ignored with a logged reason: the proxy
then waits for the control plane as if there were no cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1
Obj = dict[str, Any]


@dataclass
class Snapshot:
    """What discovery knows: objects by resource and ``namespace/name``."""

    server: str
    synced_at: float | None = None
    objects: dict[str, dict[str, Obj]] = field(default_factory=dict)


def save(path: str | Path, snap: Snapshot) -> None:
    """Write ``snap`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    data = json.dumps({"format": FORMAT, "server": snap.server, "synced_at": snap.synced_at,
                       "objects": snap.objects}, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, *, server: str) -> Snapshot | None:
    """The snapshot in ``path`` if it is usable for ``server``, else None (logged)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("discovery cache %s unreadable (%s): ignored", path, e.strerror)
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a discovery cache of format {FORMAT}")
        objects = data["objects"]
        if not isinstance(objects, dict) or not all(
                isinstance(v, dict) for v in objects.values()):
            raise ValueError("objects must map resources to objects by key")
        synced = data.get("synced_at")
        if synced is not None and not isinstance(synced, int | float):
            raise ValueError("synced_at must be a number")
    except (ValueError, KeyError) as e:
        log.warning("discovery cache %s is not usable (%s): ignored", path, e)
        return None
    if data.get("server") != server:
        log.warning("discovery cache %s is from %s, not %s: ignored", path,
                    data.get("server"), server)
        return None
    return Snapshot(server=server, synced_at=synced, objects=objects)
