"""The kernel's debugfs ``page_tables`` format (arch/x86/mm/dump_pagetables.c over mm/ptdump.c, Linux 6.1).

The kernel walks ``[0, half)`` and ``[GUARD_HOLE_END, 2**64)`` calling ``note_page(addr, level, val)``
for every leaf, every last-level entry and every empty ("none") entry above it; ``note_page`` prints
a line whenever the flags (``val & PTE_FLAGS_MASK``), the effective rights (RW/USER ANDed, NX ORed
over the levels) or the level change, or an address marker is passed — and then the marker. The ESPfix
region prints at most 16 lines and then how many it skipped. Levels are pgd=0 … pte=4 as the kernel
numbers them: with 4-level paging a PML4 entry is a pgd (p4d folded into it).

Here the same state machine (``_State``) is fed *runs* of identical calls instead of single calls:
each table's calls are merged once per (table, inherited rights) and replayed at every place the table
is used, so espfix's 65,536 aliased leaves cost 64 runs per replay and a table pointing at itself
costs one. A run is cut only where a marker falls inside it, exactly where the kernel would cut.
Past ``max_runs`` fed, repeated subtrees are summarised in a ``... collapsed ...`` line instead.

Kernel behaviour kept on purpose: the last line ends at address 0 (the final flush is
``note_page(0, -1, 0)``), and a large page's PAT bit (bit 12) is never shown, because ``note_page``
masks it away with ``PTE_FLAGS_MASK``. Divergences (never seen in real kernel tables): a non-present,
non-empty pgd/p4d entry is taken as empty (the kernel would walk the table it names), and so is a
pmd with only PROTNONE (bit 8) set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from earlymm.arch.entry import mask
from earlymm.tools.ptdump.engine import LEAF, NONPRESENT, TABLE, Node, Note, Tree, add_note, item_note, root_note
from earlymm.tools.ptdump.regions import Marker

LEVEL_NAMES = ("pgd", "p4d", "pud", "pmd", "pte")
UNITS = "BKMGTPE"
FLAGS_MASK = ((1 << 64) - 1) & ~mask(51, 12)  # PTE_FLAGS_MASK
NX, RW_US = 1 << 63, 0x6
AD = 0x60  # _PAGE_KNL_ERRATUM_MASK: an entry with only A/D set is "none"
P4D_OK = 0x63 | 0x4 | NX  # _KERNPG_TABLE | _PAGE_USER | _PAGE_NX: anything else makes a pgd/p4d "bad"
U64 = (1 << 64) - 1
DEFAULT_MAX_RUNS = 1 << 18  # a real kernel feeds ~131k (espfix's aliases); only repeats are cut
CACHE_RUNS = 4096  # a table's merged runs are kept when there are at most this many

Run = tuple[int, int, int, int, int, int]  # (address of first call, prot, eff, level, step, calls)


@dataclass
class WxRun:
    start: int
    end: int
    pages: int
    prot: int
    level: int


class _TooMany(Exception):
    """A table's merged runs outgrew ``CACHE_RUNS``: it will be streamed instead."""


class _State:
    """``struct pg_state`` and ``note_page()``."""

    def __init__(self, markers: list[Marker], out: list[str] | None, check_wx: bool) -> None:
        self.markers = markers
        self.out = out
        self.check_wx = check_wx
        self.level = -1
        self.prot = self.eff = 0
        self.start = 0
        self.m = 0
        self.lines = 0
        self.wx: list[WxRun] = []

    def note(self, addr: int, level: int, prot: int, eff: int) -> None:
        out, markers = self.out, self.markers
        if self.level == -1:
            self.prot, self.eff, self.level, self.m, self.lines = prot, eff, level, 0, 0
            if out is not None:
                out.append(f"---[ {markers[0].name} ]---\n")
            return
        nxt = markers[self.m + 1].start
        if prot == self.prot and eff == self.eff and level == self.level and addr < nxt:
            return
        if self.check_wx and self.eff & 2 and not self.eff & NX:
            self.wx.append(WxRun(self.start, addr, ((addr - self.start) & U64) >> 12, self.prot, self.level))
        marker = markers[self.m]
        if out is not None and (not marker.max_lines or self.lines < marker.max_lines):
            delta = (addr - self.start) & U64
            unit = 0
            while not delta & 1023 and unit < 6:
                delta >>= 10
                unit += 1
            out.append(f"0x{self.start:016x}-0x{addr:016x}   {delta:9d}{UNITS[unit]} "
                       f"{prot_text(self.prot, self.level)}{LEVEL_NAMES[self.level]}\n")
        self.lines += 1
        if addr >= nxt:
            if out is not None and marker.max_lines and self.lines > marker.max_lines:
                n = self.lines - marker.max_lines
                out.append(f"... {n} entr{'y' if n == 1 else 'ies'} skipped ... \n")
            self.m += 1
            self.lines = 0
            if out is not None:
                out.append(f"---[ {markers[self.m].name} ]---\n")
        self.start, self.prot, self.eff, self.level = addr, prot, eff, level

    def run(self, addr: int, prot: int, eff: int, level: int, step: int, calls: int) -> None:
        """``calls`` identical calls at ``addr``, ``addr + step``, …: only a marker can cut them."""
        self.note(addr, level, prot, eff)
        last = addr + (calls - 1) * step
        while self.markers[self.m + 1].start <= last:
            nxt = self.markers[self.m + 1].start
            k = max(1, -(-(nxt - addr) // step))
            if k >= calls:
                break
            self.note(addr + k * step, level, prot, eff)
            if self.markers[self.m + 1].start == nxt:  # no marker was passed: nothing further cuts
                break


def prot_text(pr: int, level: int) -> str:
    """``printk_prot()``: 30 blanks for a non-present entry, else the flag columns."""
    if not pr & 1:
        return " " * 30
    return "".join((
        "USR " if pr & 4 else "    ", "RW " if pr & 2 else "ro ", "PWT " if pr & 8 else "    ",
        "PCD " if pr & 16 else "    ", "PSE " if level <= 3 and pr & 0x80 else "    ",
        "PAT " if (level == 4 and pr & 0x80) or (level in (2, 3) and pr & 0x1000) else "    ",
        "GLB " if pr & 0x100 else "    ", "NX " if pr & NX else "x  "))


def dump(tree: Tree, markers: list[Marker], *, check_wx: bool = False, text: bool = True,
         max_runs: int = DEFAULT_MAX_RUNS) -> tuple[str, list[WxRun]]:
    """The ``page_tables`` text (``tree`` read with ``keep_nonpresent``) and the W+X runs the kernel's
    boot-time check would count. Notes on anything unreadable or collapsed go to ``tree.notes``."""
    sem = tree.sem
    la57 = len(sem.rows) == 5
    lvl = (0, 1, 2, 3, 4) if la57 else (0, 2, 3, 4)
    out: list[str] | None = [] if text else None
    st = _State(markers, out, check_wx)
    feed = st.run
    # Per (table, inherited rights): its calls merged into runs, and its notes, both relative to its base.
    cache: dict[tuple[int, int, int], tuple[list[Run], list[Note]] | None] = {}
    budget = [max_runs]
    seen: set[int] = set()
    collapsed_at = [-1]
    tree.notes.clear()

    def node_runs(node: Node, acc: int, xd: int) -> tuple[list[Run], list[Note]] | None:
        """The node's calls merged into runs, and its notes, relative to its base; None if too many runs."""
        key = (id(node), acc, xd)
        if key in cache:
            return cache[key]
        runs: list[Run] = []
        notes: list[Note] = []

        def add(*r: int) -> None:
            _merge(runs, r)
            if len(runs) > CACHE_RUNS:
                raise _TooMany

        try:
            result = (runs, notes) if visit(node, 0, acc, xd, add, node_runs, notes) else None
        except _TooMany:
            result = None
        cache[key] = result
        return result

    def visit(node: Node, base: int, acc: int, xd: int, emit: Callable[..., None],
              child_runs: Callable[[Node, int, int], tuple[list[Run], list[Note]] | None] | None,
              notes: list[Note]) -> bool:
        """Emit the node's calls, and its notes at ``base``-relative addresses into ``notes``; False if a
        sub-table could not be merged (caller must stream)."""
        depth = node.depth
        row = sem.rows[depth]
        level, step = lvl[depth], row.span
        top = depth == 0
        pos = 0
        for idx, kind, e, child in (*node.items, (row.entries, -1, 0, None)):
            if idx > pos:  # empty entries: holes at this level
                _holes(emit, base, pos, idx, step, level, top, sem.canon_high)
            pos = idx + 1
            if kind < 0:
                break
            va = _va(base, idx, step, top, sem.canon_high)
            if top and 256 <= idx < 272:
                continue  # the guard hole is not walked
            eff_acc, eff_xd = acc & e, xd | (e & NX)
            prot = e & FLAGS_MASK
            if kind == LEAF:
                emit(va, prot, (eff_acc & RW_US) | eff_xd, level, step, 1)
            elif kind == TABLE and level <= 1 and e & FLAGS_MASK & ~P4D_OK:
                # pgd/p4d_none_or_clear_bad(): the kernel reports a "bad" entry, clears it, walks on.
                add_note(notes, "bad-entry", va, step, f"{row.level.entry_name} {e:#x} has flags a "
                         "pgd/p4d must not have: the kernel's walk clears it as bad")
                emit(va, 0, 0, level, step, 1)
            elif kind == TABLE:
                assert child is not None
                if child_runs is not None:
                    sub = child_runs(child, eff_acc & RW_US, eff_xd)
                    if sub is None:
                        return False
                    for r in sub[0]:
                        emit(va + r[0], *r[1:])
                    _rebase(notes, sub[1], va)
                else:
                    stream(child, va, eff_acc & RW_US, eff_xd)
            elif kind == NONPRESENT:
                if depth == len(sem.rows) - 1:  # a pte is always noted
                    emit(va, prot, (eff_acc & RW_US) | eff_xd, level, step, 1)
                elif not e & ~AD or depth == 0 or (la57 and depth == 1):
                    emit(va, 0, 0, level, step, 1)  # "none" (or, above the pud, taken as none)
                elif level == 3 and e & 0x80:  # a non-present huge pmd is still a leaf to ptdump
                    emit(va, prot, (eff_acc & RW_US) | eff_xd, level, step, 1)
                # else: the kernel makes no call; the entry joins whatever run is open
            else:
                item_note(notes, row, kind, e, va)
                emit(va, 0, 0, level, step, 1)  # unreadable or not walked: shown as empty
        return True

    def stream(node: Node, base: int, acc: int, xd: int) -> None:
        if budget[0] <= 0 and id(node) in seen:
            notes = tree.notes
            n = len(notes)
            add_note(notes, "collapsed", base, sem.rows[node.depth - 1].span,
                     f"repeats table {node.table:#x} as {sem.rows[node.depth].level.name}")
            if out is not None:
                line = f"... collapsed: 0x{notes[-1].start:016x}-0x{notes[-1].end:016x} {notes[-1].detail} ... \n"
                if len(notes) == n and collapsed_at[0] >= 0:  # it extended the previous note: one line
                    out[collapsed_at[0]] = line
                else:
                    collapsed_at[0] = len(out)
                    out.append(line)
            return
        seen.add(id(node))
        cached = node_runs(node, acc, xd)
        if cached is not None:
            budget[0] -= len(cached[0])
            for r in cached[0]:
                feed(base + r[0], *r[1:])
            _rebase(tree.notes, cached[1], base)
        else:
            visit(node, base, acc, xd, counted, None, tree.notes)

    def counted(*r: int) -> None:
        budget[0] -= 1
        feed(*r)

    if tree.root is None:
        root_note(tree)
    else:
        visit(tree.root, 0, U64, 0, counted, None, tree.notes)
    st.note(0, -1, 0, 0)  # "Flush out the last page"
    return ("".join(out) if out is not None else ""), st.wx


def _rebase(notes: list[Note], relative: list[Note], base: int) -> None:
    """Add a cached table's notes at the address where the table is used this time."""
    for n in relative:
        add_note(notes, n.kind, base + n.start, n.end - n.start, n.detail, n.leaves)


def _va(base: int, idx: int, step: int, top: bool, canon_high: int) -> int:
    va = base + idx * step
    if top and va >> 63 == 0 and idx * 2 >= 512 and canon_high:
        va |= canon_high
    return va


def _holes(emit: Callable[..., None], base: int, lo: int, hi: int, step: int, level: int, top: bool,
           canon_high: int) -> None:
    if top:  # split around the guard hole and the sign extension of the upper half
        for a, b in ((lo, min(hi, 256)), (max(lo, 272), hi)):
            if a < b:
                emit(_va(base, a, step, top, canon_high), 0, 0, level, step, b - a)
    else:
        emit(base + lo * step, 0, 0, level, step, hi - lo)


def _merge(runs: list[Run], r: tuple[int, ...]) -> None:
    addr, prot, eff, level, step, calls = r
    if runs:
        a, p, f, lv, s, c = runs[-1]
        if p == prot and f == eff and lv == level and s == step and a + c * s == addr:
            runs[-1] = (a, p, f, lv, s, c + calls)
            return
    runs.append((addr, prot, eff, level, step, calls))
