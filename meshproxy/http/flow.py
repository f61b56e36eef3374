"""Backpressure bookkeeping: who asked a transport to stop reading.

A transport's reading may be paused for several independent reasons at once (the peer
transport's write buffer is full, pipelined requests are queued, no consumer is
attached yet). :class:`FlowControl` counts them by name so that each reason is lifted
independently and pause/resume are safe to call twice; the transport is resumed only
when no reason is left.
"""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    """What is paused: a client's ``PollTransport`` or an upstream's asyncio transport."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """Pause/resume reading of one transport, by named reason."""

    __slots__ = ("_reasons", "transport")

    def __init__(self, transport: Readable) -> None:
        self.transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass  # closing transport
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def __repr__(self) -> str:
        return f"<FlowControl paused_by={sorted(self._reasons)}>"
