"""Typed events the machine emits, and the sink protocol renderers consume (design §7.2 ``trace.py``).

Hardware events live here; the kernel model defines its own (phases, pool allocations, resets) on the
same ``Event`` base so one stream carries the whole story.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; ``kind`` names it in JSON."""

    @property
    def kind(self) -> str:
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) and f.name in HEX_FIELDS \
                else v
        return out


HEX_FIELDS = frozenset({"va", "pa", "old", "new", "value", "cr2", "error_code", "addr", "entry", "table",
                        "rip", "phys", "cr3", "start", "end", "page"})


@dataclass(frozen=True, slots=True)
class CrWrite(Event):
    """A control-register write the CPU accepted: ``reg`` from ``old`` to ``new``."""

    reg: str
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class TlbFlush(Event):
    """TLB entries dropped (``scope``: all, non-global, one page, one PCID)."""

    scope: str  # "all", "non-global", "page", "pcid"
    va: int = 0
    pcid: int = 0


@dataclass(frozen=True, slots=True)
class FaultRaised(Event):
    """An exception raised by an access, before delivery (``depth``: handlers nested)."""

    vector: int
    error_code: int
    cr2: int
    reason: str
    depth: int


@dataclass(frozen=True, slots=True)
class FaultDelivered(Event):
    """An exception delivered through the IDT to the handler registered at its gate."""

    vector: int
    handler: str
    depth: int


@dataclass(frozen=True, slots=True)
class Iret(Event):
    """A handler returned: the frame is popped and the faulting access retried."""

    vector: int
    depth: int


@dataclass(frozen=True, slots=True)
class DoubleFault(Event):
    """A fault while delivering another became #DF (SDM Vol. 3A §6.15, interrupt 8)."""

    first_vector: int
    second_vector: int
    detail: str


@dataclass(frozen=True, slots=True)
class ModeChange(Event):
    """The CPU's operating mode changed (real, protected, compatibility, 64-bit)."""

    mode: str


class TraceSink(Protocol):
    enabled: bool

    def emit(self, event: Event) -> None: ...


class ListTrace:
    """Keeps every event (``enabled``) and always the last ``keep`` ones, for post-mortem reports;
    ``listeners`` see every event as it passes (statistics are derived this way, never booked apart)."""

    def __init__(self, enabled: bool = True, keep: int = 64) -> None:
        self.enabled = enabled
        self.events: list[Event] = []
        self.recent: deque[Event] = deque(maxlen=keep)
        self.counts: dict[str, int] = {}
        self.listeners: list[Callable[[Event], None]] = []

    def emit(self, event: Event) -> None:
        self.recent.append(event)
        k = event.kind
        self.counts[k] = self.counts.get(k, 0) + 1
        if self.enabled:
            self.events.append(event)
        for listener in self.listeners:
            listener(event)
