"""Shared helpers for comparing earlymm's MMU with ``tests/reference.py``: raw table building (no Mapper,
so the tables are exactly what the test wrote), register set-up on both sides, case naming, comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from earlymm.arch.modes import Features, PagingMode
from earlymm.hw.cpu import Cpu
from earlymm.hw.memory import PhysMem
from earlymm.hw.mmu import Mmu
from earlymm.hw.regs import ControlRegs
from earlymm.hw.tlb import Tlb
from earlymm.hw.walk import GP, OK, PF, WalkResult
from tests import reference as ref

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63

# Per mode: (entry names from the root down, index shifts, index bits, entry size).
MODES: dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], int]] = {
    "32": (("pde", "pte"), (22, 12), (10, 10), 4),
    "pae": (("pdpte", "pde", "pte"), (30, 21, 12), (2, 9, 9), 8),
    "4": (("pml4e", "pdpte", "pde", "pte"), (39, 30, 21, 12), (9, 9, 9, 9), 8),
    "5": (("pml5e", "pml4e", "pdpte", "pde", "pte"), (48, 39, 30, 21, 12), (9, 9, 9, 9, 9), 8),
}
PMODE = {"32": PagingMode.LEGACY32, "pae": PagingMode.PAE, "4": PagingMode.LONG4, "5": PagingMode.LONG5}
MODE_WORDS = {"32": "32-bit", "pae": "PAE", "4": "4-level", "5": "5-level"}
LEAF_SIZE = {"pte": 1 << 12, "pde": 1 << 21, "pdpte": 1 << 30}


def leaf_size(mode: str, level: str) -> int:
    if mode == "32" and level == "pde":
        return 1 << 22
    return LEAF_SIZE[level]


def cr_values(mode: str, *, wp: bool = False, nxe: bool = False, smep: bool = False, smap: bool = False,
              pke: bool = False, pks: bool = False, pse: bool = True) -> tuple[int, int, int]:
    """(CR0, CR4, EFER) for ``mode`` with the listed controls."""
    cr0 = ref.CR0_PE | ref.CR0_PG | (ref.CR0_WP if wp else 0)
    cr4 = (ref.CR4_SMEP if smep else 0) | (ref.CR4_SMAP if smap else 0)
    cr4 |= (ref.CR4_PKE if pke else 0) | (ref.CR4_PKS if pks else 0)
    efer = ref.EFER_NXE if nxe else 0
    if mode == "32":
        cr4 |= ref.CR4_PSE if pse else 0
    elif mode == "pae":
        cr4 |= ref.CR4_PAE
    else:
        cr4 |= ref.CR4_PAE | (ref.CR4_LA57 if mode == "5" else 0)
        efer |= ref.EFER_LME | ref.EFER_LMA
    return cr0, cr4, efer


class Tables:
    """Raw page tables in a fresh ``PhysMem``; tables come from a bump allocator from 1 MiB."""

    def __init__(self, mode: str, maxphyaddr: int = 52) -> None:
        self.mode = mode
        self.names, self.shifts, self.ibits, self.esize = MODES[mode]
        self.maxphyaddr = maxphyaddr
        self.mem = PhysMem()
        self.next = 0x10_0000
        self.root = self.alloc()

    def alloc(self) -> int:
        pa = self.next
        self.next += 0x1000
        self.mem.fill(pa, 0x1000, 0)
        return pa

    def index(self, va: int, level: int) -> int:
        return (va >> self.shifts[level]) & ((1 << self.ibits[level]) - 1)

    def put(self, va: int, flags: dict[str, int], leaf: str, leaf_entry: int) -> list[int]:
        """Make ``va`` reach a ``leaf`` entry whose raw value is ``leaf_entry``; entries above get
        ``flags[name]`` (default P|RW|US; PAE PDPTEs P). Returns the entry addresses from the root down.
        Existing upper entries are reused and must agree."""
        table = self.root
        addrs = []
        for lvl, name in enumerate(self.names):
            ea = table + self.index(va, lvl) * self.esize
            addrs.append(ea)
            if name == leaf:
                self.mem.write_int(ea, self.esize, leaf_entry)
                return addrs
            want = flags.get(name, P if (self.mode == "pae" and name == "pdpte") else P | RW | US)
            cur = self.mem.read_int(ea, self.esize)
            if cur & P:
                if cur & ~ref.bits(self.maxphyaddr - 1, 12) != want & ~ref.bits(self.maxphyaddr - 1, 12):
                    raise ValueError(f"{name} for {va:#x} already {cur:#x}, wanted flags {want:#x}")
                table = cur & ref.bits(self.maxphyaddr - 1, 12)
            else:
                table = self.alloc()
                self.mem.write_int(ea, self.esize, table | want)
        raise ValueError(f"no level {leaf} in mode {self.mode}")

    def pdptes(self) -> tuple[int, int, int, int]:
        r = self.mem.read_u64
        return (r(self.root), r(self.root + 8), r(self.root + 16), r(self.root + 24))


def leaf_value(mode: str, level: str, pa: int, flags: int) -> int:
    """A present leaf entry mapping ``pa`` (PS added for large pages; PSE-36 bits for 4 MiB pages)."""
    if level == "pte":
        return pa | flags | P
    if mode == "32":
        return (pa & 0xFFC0_0000) | (((pa >> 32) & 0xFF) << 13) | flags | P | PS
    return pa | flags | P | PS


@dataclass
class Env:
    """One register setting, held identically by an earlymm ``Mmu`` and a ``RefCpu``."""

    mode: str
    cr0: int
    cr4: int
    efer: int
    pkru: int = 0
    pkrs: int = 0
    features: Features = field(default_factory=Features)

    def words(self) -> str:
        out = []
        if self.cr0 & ref.CR0_WP:
            out.append("cr0.wp=1")
        if self.efer & ref.EFER_NXE:
            out.append("efer.nxe=1")
        for bit, word in ((ref.CR4_PSE, "cr4.pse"), (ref.CR4_SMEP, "cr4.smep"), (ref.CR4_SMAP, "cr4.smap"),
                          (ref.CR4_PKE, "cr4.pke"), (ref.CR4_PKS, "cr4.pks")):
            if self.cr4 & bit and not (bit == ref.CR4_PSE and self.mode != "32"):
                out.append(f"{word}=1")
        if self.cr4 & ref.CR4_PKE:
            out.append(f"pkru={self.pkru:#x}")
        if self.cr4 & ref.CR4_PKS:
            out.append(f"pkrs={self.pkrs:#x}")
        return " ".join(out) or "cr0.wp=0"


class Pair:
    """An earlymm MMU (TLB disabled, so every translate walks) and the reference, on one memory."""

    def __init__(self, tables: Tables, features: Features | None = None) -> None:
        self.t = tables
        self.features = features or Features(maxphyaddr=tables.maxphyaddr)
        self.regs = ControlRegs()
        self.mmu = Mmu(tables.mem, self.regs, self.features, Tlb(enabled=False))
        self.cpu = ref.RefCpu(0, 0, 0, 0)

    def set(self, env: Env) -> None:
        r = self.regs
        r.cr0, r.cr4, r.efer, r.cr3 = env.cr0, env.cr4, env.efer, self.t.root
        r.pkru, r.pkrs = env.pkru, env.pkrs
        pdptes = self.t.pdptes() if self.t.mode == "pae" else None
        r.pdptes = pdptes or (0, 0, 0, 0)
        self.mmu.reload()
        f = self.features
        self.cpu = ref.RefCpu(env.cr0, self.t.root, env.cr4, env.efer, maxphyaddr=f.maxphyaddr,
                              gbpages=f.gbpages, pse36=f.pse36, pkru=env.pkru, pkrs=env.pkrs, pdptes=pdptes)

    def reference(self, va: int, kind: int, user: bool, implicit: bool, ac: bool) -> ref.RefResult:
        return ref.translate(self.t.mem.read_int, self.cpu, ref.RefAccess(va, kind, user, implicit, ac))

    def compare(self, va: int, kind: int, user: bool, implicit: bool, ac: bool,
                entry_addrs: Iterable[int] = (), check_translate: bool = True) -> str | None:
        """None if earlymm agrees with the reference on this access, else a description of the difference.

        ``probe`` must give the reference's outcome, error code, physical address and page size;
        ``translate`` must make exactly the reference's A/D writes (checked on ``entry_addrs``, and by
        counting memory writes), which are undone afterwards."""
        want = self.reference(va, kind, user, implicit, ac)
        got = self.mmu.probe(va, kind, user, implicit, ac)
        diff = outcome_diff(got, want)
        if diff or not check_translate:
            return diff
        mem = self.t.mem
        esize = self.t.esize
        addrs = list(entry_addrs)
        before = {a: mem.read_int(a, esize) for a in addrs}
        writes = mem.writes
        self.mmu.translate(va, kind, user, implicit, ac)
        nwrites = mem.writes - writes
        after = {a: mem.read_int(a, esize) for a in addrs}
        for a in addrs:
            mem.write_int(a, esize, before[a])
        problems = []
        for a in addrs:
            exp = want.ad[a][1] if a in want.ad else before[a]
            if after[a] != exp:
                problems.append(f"entry {a:#x}: {before[a]:#x} -> {after[a]:#x}, expected {exp:#x}")
        if nwrites != len(want.ad):
            problems.append(f"translate made {nwrites} memory writes, expected {len(want.ad)} "
                            f"({', '.join(hex(a) for a in want.ad)})")
        return "; ".join(problems) or None


def describe(r: WalkResult | ref.RefResult) -> str:
    if isinstance(r, ref.RefResult):
        if r.outcome == ref.OK:
            return f"ok pa={r.pa:#x} size={r.page_size:#x}"
        if r.outcome == ref.GP:
            return "#GP"
        return f"#PF err={r.error_code:#x} ({r.why})"
    if r.outcome == OK:
        return f"ok pa={r.pa:#x} size={r.page_size:#x}"
    if r.outcome == GP:
        return "#GP"
    if r.outcome == PF:
        return f"#PF err={r.error_code:#x} ({r.reason.value if r.reason else '?'})"
    return f"outcome {r.outcome} ({r.reason})"


def outcome_diff(got: WalkResult, want: ref.RefResult) -> str | None:
    same = (
        (want.outcome == ref.OK and got.outcome == OK and got.pa == want.pa and got.page_size == want.page_size)
        or (want.outcome == ref.GP and got.outcome == GP)
        or (want.outcome == ref.PF and got.outcome == PF and got.error_code == want.error_code)
    )
    return None if same else f"earlymm: {describe(got)}; reference: {describe(want)}"


KINDS = (ref.READ, ref.WRITE, ref.FETCH)
PRIVS = ("user", "supervisor", "implicit")


def accesses() -> list[tuple[int, str]]:
    """(kind, privilege) pairs; implicit supervisor accesses are data accesses only."""
    return [(k, p) for k in KINDS for p in PRIVS if not (k == ref.FETCH and p == "implicit")]


def access_words(kind: int, priv: str, ac: bool, smap: bool) -> str:
    words = f"{priv} {ref.KIND_WORDS[kind]}"
    if smap and priv != "user":
        words += f" eflags.ac={int(ac)}"
    return words


def flag_words(name: str, e: int, *, xd: bool = True) -> str:
    s = f"{name}.rw={int(bool(e & RW))} {name}.us={int(bool(e & US))}"
    if xd:
        s += f" {name}.xd={int(bool(e & XD))}"
    return s


def rights_combos(xd: bool) -> list[int]:
    """Every RW/US(/XD) combination of a present entry."""
    out = []
    for rw in (0, RW):
        for us in (0, US):
            for x in ((0, XD) if xd else (0,)):
                out.append(P | rw | us | x)
    return out


def report(failures: list[str], total: int, limit: int = 25) -> str:
    head = f"{len(failures)} of {total} cases disagree with the reference:\n  "
    more = f"\n  … and {len(failures) - limit} more" if len(failures) > limit else ""
    return head + "\n  ".join(failures[:limit]) + more


def boot_cpu(mem: PhysMem, mode: str, root: int, features: Features | None = None, **controls: bool) -> Cpu:
    """A Cpu brought into ``mode`` by the architectural sequence of CR writes (spec §1.8)."""
    cpu = Cpu(mem, features or Features())
    cr0, cr4, efer = cr_values(mode, **controls)
    cpu.write_cr4(cr4)
    cpu.write_cr3(root)
    cpu.write_efer(efer & ~ref.EFER_LMA)
    cpu.write_cr0(cr0 | (cpu.regs.cr0 & 0x10))
    if mode in ("4", "5"):
        cpu.regs.cs_l = True  # the far jump to a 64-bit code segment
    assert cpu.paging is PMODE[mode]
    return cpu
