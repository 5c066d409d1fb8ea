"""Helpers for the bulk-translation tests: run ``translate_many`` and the scalar ``walk`` on the same
addresses and list every disagreement, and describe access environments compactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from earlymm.arch.flags import Cr0, Cr4, Efer
from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import WalkPlan, compile_plan, walk
from earlymm.tools.bulk import translate_many

FIELDS = ("outcome", "pa", "page_size", "error_code", "user_page", "writable", "xd", "pkey")
# (kind, user, implicit, ac): every access the rights rules tell apart.
ACCESSES = tuple((kind, user, implicit, ac) for kind in (0, 1, 2) for user in (False, True)
                 for implicit in (False, True) for ac in (False, True) if not (user and implicit))


@dataclass(frozen=True)
class Env:
    """Control-register bits the rights rules read, and the key registers."""

    wp: bool = False
    nxe: bool = False
    smep: bool = False
    smap: bool = False
    pke: bool = False
    pks: bool = False
    pse: bool = True
    pkru: int = 0
    pkrs: int = 0

    def plan(self, mode: str, features: Features) -> WalkPlan:
        cr0 = int(Cr0.PE | Cr0.PG) | (int(Cr0.WP) if self.wp else 0)
        cr4 = sum(int(bit) for on, bit in ((self.smep, Cr4.SMEP), (self.smap, Cr4.SMAP), (self.pke, Cr4.PKE),
                                           (self.pks, Cr4.PKS)) if on)
        efer = int(Efer.NXE) if self.nxe else 0
        if mode == "32":
            cr4 |= int(Cr4.PSE) if self.pse else 0
        else:
            cr4 |= int(Cr4.PAE)
            if mode in ("4", "5"):
                cr4 |= int(Cr4.LA57) if mode == "5" else 0
                efer |= int(Efer.LME | Efer.LMA)
        return compile_plan(cr0, cr4, efer, features)


def envs(rng_bits: Iterator[int], count: int) -> list[Env]:
    """All-off, all-on, then ``count`` mixes drawn from ``rng_bits`` (a stream of random 32-bit values)."""
    out = [Env(), Env(True, True, True, True, True, True, True, 0x5555_5554, 0xAAAA_AAA8)]
    for _ in range(count):
        b = next(rng_bits)
        out.append(Env(wp=bool(b & 1), nxe=bool(b & 2), smep=bool(b & 4), smap=bool(b & 8), pke=bool(b & 16),
                       pks=bool(b & 32), pse=bool(b & 64), pkru=next(rng_bits), pkrs=next(rng_bits)))
    return out


def mismatches(mem: PhysMem, plan: WalkPlan, root: int, vas: Sequence[int], kind: int = 0, user: bool = False,
               implicit: bool = False, ac: bool = False, pkru: int = 0, pkrs: int = 0,
               pdptes: tuple[int, ...] = (), label: str = "") -> list[str]:
    """One line per address where ``translate_many`` and ``walk`` disagree on any field."""
    bulk = translate_many(mem, plan, root, np.array(vas, dtype=np.uint64), kind, user, implicit, ac, pkru, pkrs,
                          pdptes)
    cols = {f: getattr(bulk, f).tolist() for f in FIELDS}
    bad = []
    for i, va in enumerate(vas):
        w = walk(mem, plan, root, va, kind, user, implicit, ac, pkru, pkrs, pdptes)
        want = {f: getattr(w, f) for f in FIELDS}
        got = {f: cols[f][i] for f in FIELDS}
        if got != want:
            diff = ", ".join(f"{f}: bulk {got[f]!r} walk {want[f]!r}" for f in FIELDS if got[f] != want[f])
            bad.append(f"{label} va={va:#x} kind={kind} user={user} implicit={implicit} ac={ac} "
                       f"({w.reason}): {diff}")
    return bad


def snapshot(mem: PhysMem) -> dict[int, bytes]:
    return {pfn: bytes(f) for pfn, f in mem.frames.items()}


ADDR = 0x000F_FFFF_FFFF_F000


def ia32e_leaves(mem: PhysMem, root: int, levels: int, limit: int = 400_000) -> list[tuple[int, int]]:
    """(canonical va, page size) of every present leaf under ``root`` (4/5-level), aliases included — a
    walk of its own (P and PS only, no reserved bits), so that sampling does not lean on the code under test."""
    width = 12 + 9 * levels
    out: list[tuple[int, int]] = []

    def canon(va: int) -> int:
        return va | ((1 << 64) - (1 << width)) if va >> (width - 1) & 1 else va

    def visit(table: int, depth: int, base: int) -> None:
        entries = mem.entries8(table >> 12)
        if entries is None or len(out) >= limit:
            return
        e = np.frombuffer(entries, dtype=np.uint64)
        shift = 12 + 9 * (levels - 1 - depth)
        for i in np.flatnonzero(e & np.uint64(1)).tolist():
            x, va = int(e[i]), base | (i << shift)
            if depth == levels - 1 or (depth >= levels - 3 and x & 0x80):
                out.append((canon(va), 1 << shift))
            else:
                visit(x & ADDR, depth + 1, va)

    visit(root, 0, 0)
    return out
