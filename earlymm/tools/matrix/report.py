"""The matrix's answer: outcomes grouped by failure reason, the smallest failing configuration of each
group and the ``earlymm boot`` command that reproduces it; as text, JSON, or an HTML page.

Reasons name addresses and counts that differ between machines ("reset the pool 14286 times … mapping
0xffff880000014000"); a group is one *kind* of failure, so numbers are replaced by placeholders before
grouping (``reason_pattern``). A boot that ran to the end with a failed invariant (spec §3.11) is a failure
too, grouped by the invariants that failed. Nothing here depends on timing or worker order.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from earlymm.tools.matrix.grid import Config, size_key

OK_OUTCOMES = ("booted", "stopped")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_DEC = re.compile(r"(?<![\w.])\d+(?![\w])")


def reason_pattern(reason: str) -> str:
    return _DEC.sub("N", _HEX.sub("0x…", reason))


def command(argv: list[str]) -> str:
    return shlex.join(["earlymm", "boot", *argv])


def failed(r: dict[str, Any]) -> bool:
    return r["outcome"] not in OK_OUTCOMES or bool(r["failed"])


def group_key(r: dict[str, Any]) -> tuple[str, str, str]:
    if not failed(r):
        return (r["outcome"], "", "")
    why = reason_pattern(r["reason"])
    if r["failed"]:
        why += ("; " if why else "") + "invariants failed: " + ", ".join(r["failed"])
    return (r["outcome"], r["phase"], why)


@dataclass
class Group:
    outcome: str
    phase: str
    pattern: str
    members: list[int]
    smallest: int

    @property
    def ok(self) -> bool:
        return not self.pattern and self.outcome in OK_OUTCOMES


def group(configs: list[Config], records: list[dict[str, Any]]) -> list[Group]:
    """Groups in a fixed order: failures first (most configurations first), then the successes."""
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        by_key.setdefault(group_key(r), []).append(r["index"])
    ram = {r["index"]: r.get("ram", 0) for r in records}
    out = []
    for (outcome, phase, pattern), members in by_key.items():
        smallest = min(members, key=lambda i: size_key(configs[i], lambda c: ram[c.index]))
        out.append(Group(outcome, phase, pattern, sorted(members), smallest))
    out.sort(key=lambda g: (g.ok, -len(g.members), g.outcome, g.phase, g.pattern))
    return out


def grid_axes(configs: list[Config]) -> dict[str, list[str]]:
    """The values each axis took, in first-seen order (memory as one axis)."""
    axes: dict[str, list[str]] = {"memory": []}
    for c in configs:
        for k, v in c.label().items():
            vals = axes.setdefault(k, [])
            if v not in vals:
                vals.append(v)
    return axes


def to_json(configs: list[Config], records: list[dict[str, Any]], groups: list[Group]) -> dict[str, Any]:
    return {
        "configurations": len(configs),
        "axes": grid_axes(configs),
        "failed": sum(len(g.members) for g in groups if not g.ok),
        "groups": [{
            "outcome": g.outcome, "phase": g.phase, "reason": g.pattern, "count": len(g.members), "ok": g.ok,
            "smallest": g.smallest, "smallest_config": configs[g.smallest].label(),
            "smallest_reason": records[g.smallest]["reason"], "command": command(records[g.smallest]["argv"]),
            "configurations_in_group": g.members,
        } for g in groups],
        "results": [{"index": r["index"], "config": configs[r["index"]].label(), "command": command(r["argv"]),
                     **{k: r[k] for k in ("outcome", "phase", "reason", "failed", "stats")}} for r in records],
    }


def varied(configs: list[Config]) -> list[str]:
    """The axes that take more than one value (the others are the same for every configuration)."""
    axes = grid_axes(configs)
    return [k for k, v in axes.items() if len(v) > 1]


def text(configs: list[Config], records: list[dict[str, Any]], groups: list[Group]) -> list[str]:
    axes = grid_axes(configs)
    shape = " × ".join(f"{k} {len(v)}" for k, v in axes.items() if len(v) > 1) or "one configuration"
    fails = sum(len(g.members) for g in groups if not g.ok)
    out = [f"earlymm matrix: {len(configs)} configurations ({shape}); {fails} failed, "
           f"{len(configs) - fails} booted or stopped", ""]
    keys = varied(configs)
    for g in groups:
        head = f"{len(g.members):6d}  {g.outcome}" + (f" in {g.phase}" if g.phase else "")
        if g.ok:
            out.append(head)
            continue
        out.append(head + f" — {g.pattern}")
        label = configs[g.smallest].label()
        shown = ", ".join(f"{k} {label[k]}" for k in keys) or "the only configuration"
        out.append(f"        smallest: #{g.smallest} ({shown})")
        out.append(f"        reproduce: {command(records[g.smallest]['argv'])}")
    return out


def html_doc(configs: list[Config], records: list[dict[str, Any]], groups: list[Group]) -> dict[str, Any]:
    """The page's data, compact: each configuration is a row of value indices (one per axis) and its group."""
    axes = grid_axes(configs)
    names = list(axes)
    pos = {k: {v: i for i, v in enumerate(vals)} for k, vals in axes.items()}
    group_of = {i: gi for gi, g in enumerate(groups) for i in g.members}
    rows = []
    for c in configs:
        label = c.label()
        rows.append([group_of[c.index], *[pos[k][label[k]] for k in names], c.index])
    keys = varied(configs)
    return {
        "configurations": len(configs), "failed": sum(len(g.members) for g in groups if not g.ok),
        "axes": [[k, axes[k]] for k in names], "rows": rows,
        "commands": [command(r["argv"]) for r in records],
        "groups": [{"outcome": g.outcome, "phase": g.phase, "reason": g.pattern, "count": len(g.members), "ok": g.ok,
                    "smallest": g.smallest, "command": command(records[g.smallest]["argv"]),
                    "smallest_config": ", ".join(f"{k} {configs[g.smallest].label()[k]}" for k in keys)}
                   for g in groups],
    }
