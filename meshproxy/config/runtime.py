"""Process-level settings: hot reload, graceful drain, worker processes.

Used by :mod:`meshproxy.server` (reload and drain) and :mod:`meshproxy.workers`
(``--workers`` on the command line overrides ``workers`` here).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from meshproxy.config.base import Seconds, Settings


class ReloadConfig(Settings, kw_only=True):
    """How the config file is watched. SIGHUP always triggers a reload as well."""

    #: Watch the file for changes; off means only SIGHUP reloads it.
    watch: bool = True
    #: Seconds between checks of the file's mtime/size/inode. 1 s: a stat per second
    #: is free, and an operator's edit takes effect before they switch windows.
    poll_interval: Seconds = 1.0


class DrainConfig(Settings, kw_only=True):
    """What SIGTERM does: stop accepting, let requests in flight finish, exit 0."""

    #: Seconds requests in flight get to finish before connections are cut. 15 s is
    #: below Kubernetes' default 30 s termination grace period with room to spare.
    timeout: Seconds = 15.0


class ProcessConfig(Settings, kw_only=True):
    """Worker processes."""

    #: Processes sharing every listener port through SO_REUSEPORT. The command line's
    #: ``--workers`` wins over this. 1 keeps a sidecar to one core, as Envoy's
    #: ``--concurrency`` is usually set for sidecars.
    workers: Annotated[int, Meta(ge=1, le=64)] = 1
