"""Audits over an address space: one ``Finding`` per problem, and the kernel's own summary lines.

* ``check_wx`` — the kernel's boot-time W+X check (``ptdump_walk_pgd_level_checkwx``, CONFIG_DEBUG_WX):
  the Linux walk of the kernel page table, counting pages in runs whose effective rights are writable
  and executable, then "x86/mm: Checked W+X mappings: …". With PTI the kernel checks the user page
  table as well (``ptdump_walk_user_pgd_level_checkwx``), and so does this.
* ``check_user_kernel`` — user/kernel isolation as the CPU enforces it (the architectural reading):
  in the kernel's page table, user pages the kernel may execute (no SMEP and no NX — the ret2usr
  surface PTI closes by setting NX on the user half of the kernel PGD) and kernel-half pages user mode
  may access; in a PTI user page table, kernel memory that stays reachable beyond what PTI shares on
  purpose (cpu_entry_area, espfix, the LDT remap), with kernel text reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earlymm.arch.flags import Cr4
from earlymm.tools.ptdump import linux
from earlymm.tools.ptdump.engine import BUDGET, COLLAPSED, HOLE, KIND_NAMES, SKIPPED, Note, Tree, expand
from earlymm.tools.ptdump.regions import CPU_ENTRY_AREA_BASE, ESPFIX_BASE_ADDR, Layout, detect
from earlymm.tools.ptdump.runs import LeafRun, merge
from earlymm.tools.ptdump.space import PTI_USER_BIT, Space

NX = 1 << 63
# Notes that mean part of the tables was not examined: an audit with any of them is incomplete.
GAP_KINDS = frozenset({KIND_NAMES[HOLE], KIND_NAMES[SKIPPED], COLLAPSED, BUDGET})


def gaps(tree: Tree) -> list[Note]:
    """The notes of ``tree`` saying some of it could not be read or was not examined."""
    return [n for n in tree.notes if n.kind in GAP_KINDS]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    start: int
    end: int
    detail: str
    expected: bool = False  # something PTI shares on purpose: reported, but not a finding

    def line(self) -> str:
        return f"{self.check}: 0x{self.start:016x}-0x{self.end:016x} {size_text(self.end - self.start)} {self.detail}"


def size_text(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and not n & ((1 << shift) - 1):
            return f"{n >> shift}{unit}"
    return f"{n}B"


def pti_pair(space: Space) -> tuple[int, int | None]:
    """(kernel CR3, PTI user CR3 or None). The user PGD is the page after the 8 KiB-aligned kernel PGD
    (PTI_USER_PGTABLE_MASK = bit 12); a CR3 with that bit set was taken in user mode. Otherwise PTI is
    recognised by the kernel PGD's user half: PTI sets NX on every present entry there, and the user
    PGD holds the same entries without it."""
    cr3 = space.cr3
    if not space.mode.is_ia32e:
        return cr3, None
    root = space.root("arch") & ~PTI_USER_BIT
    kern, user = space.mem.entries8(root >> 12), space.mem.entries8((root | PTI_USER_BIT) >> 12)
    if cr3 & PTI_USER_BIT:
        # Bit 12 alone does not make a PTI user CR3 (any table may sit at an odd page): the page before
        # must be its kernel PGD. If that page cannot be read, assume it is, so the audit reports the
        # kernel table unreadable instead of silently auditing only half of the pair.
        if kern is None or _pti_shaped(kern, user):
            return cr3 & ~PTI_USER_BIT, cr3
        return cr3, None
    if _pti_shaped(kern, user):
        return cr3, cr3 | PTI_USER_BIT
    return cr3, None


def _pti_shaped(kern: memoryview | None, user: memoryview | None) -> bool:
    if kern is None or user is None:
        return False
    present = [i for i in range(256) if kern[i] & 1]
    return bool(present) and all(kern[i] & NX and user[i] == kern[i] & ~NX for i in present)


def layout_of(space: Space) -> Layout:
    tree = space.tree("linux")
    return detect(expand(tree), [r.span for r in tree.sem.rows], len(tree.sem.rows) == 5)


@dataclass
class Audit:
    """What a check found: findings, the log lines, and the notes of every tree it read (``gaps`` among
    them: what it could not examine, which makes it incomplete)."""

    findings: list[Finding] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    @property
    def gaps(self) -> list[Note]:
        return [n for n in self.notes if n.kind in GAP_KINDS]


def check_wx(space: Space, layout: Layout | None = None) -> Audit:
    """Findings and the kernel's log lines for the kernel (and, with PTI, the user) page table. Where a
    table could not be read the verdict is "incomplete", never "passed"."""
    if not space.mode.is_ia32e:
        raise ValueError("the W+X check follows the x86-64 kernel: it needs 4- or 5-level paging")
    layout = layout or layout_of(space)
    kernel_cr3, user_cr3 = pti_pair(space)
    out = Audit()
    for cr3, label in ((kernel_cr3, "kernel"), (user_cr3, "user")):
        if cr3 is None:
            continue
        if label == "user":
            out.log.append("x86/mm: Checking user space page tables")
        tree = space.with_cr3(cr3).tree("linux", keep_nonpresent=True)
        _text, wx = linux.dump(tree, layout.markers(), check_wx=True, text=False)
        out.notes += tree.notes
        pages = 0
        for r in wx:
            pages += r.pages
            out.findings.append(Finding("W+X", r.start, r.end, f"{r.pages} pages {linux.LEVEL_NAMES[r.level]} "
                                        f"[{layout.region_of(r.start)}] {label} CR3 {cr3:#x}"))
        missed = gaps(tree)
        if missed:
            out.log.append(f"x86/mm: Checked W+X mappings: incomplete, {pages} W+X pages found in what could be "
                           f"read; {len(missed)} range(s) of {label} CR3 {cr3:#x} not examined.")
        else:
            out.log.append(f"x86/mm: Checked W+X mappings: FAILED, {pages} W+X pages found." if pages else
                           "x86/mm: Checked W+X mappings: passed, no W+X pages found.")
    return out


def _runs(space: Space, cr3: int, notes: list[Note]) -> list[LeafRun]:
    tree = space.with_cr3(cr3).tree("arch")
    runs = merge(tree.sem, expand(tree))
    notes += tree.notes
    return runs
def _spans(runs: list[LeafRun]) -> list[tuple[int, int, LeafRun]]:
    """Coalesce runs that touch in VA with the same rights (whatever their PA): one line per stretch."""
    out: list[tuple[int, int, LeafRun]] = []
    for r in runs:
        if out and out[-1][1] == r.va and (out[-1][2].write, out[-1][2].nx) == (r.write, r.nx):
            out[-1] = (out[-1][0], r.end, out[-1][2])
        else:
            out.append((r.va, r.end, r))
    return out


def check_user_kernel(space: Space, layout: Layout | None = None) -> Audit:
    if not space.mode.is_ia32e:
        raise ValueError("the user/kernel check follows the x86-64 kernel: it needs 4- or 5-level paging")
    layout = layout or layout_of(space)
    kernel_cr3, user_cr3 = pti_pair(space)
    smep = bool(space.cr4 & Cr4.SMEP)
    findings: list[Finding] = []
    notes: list[Note] = []
    kruns = _runs(space, kernel_cr3, notes)
    if not smep:
        ex = [r for r in kruns if r.user and not r.nx and r.va >> 63 == 0]
        for s, e, _r in _spans(ex):
            findings.append(Finding("user-exec-from-kernel", s, e, f"user pages the kernel can execute "
                                    f"(CR4.SMEP=0, no NX) in kernel CR3 {kernel_cr3:#x}"))
    for s, e, r in _spans([r for r in kruns if r.user and r.va >> 63]):
        findings.append(Finding("kernel-half-user-accessible", s, e, f"{'writable' if r.write else 'read-only'} "
                                f"[{layout.region_of(s)}] in kernel CR3 {kernel_cr3:#x}"))
    log = [f"kernel CR3 {kernel_cr3:#x}, PTI user CR3 {user_cr3:#x}" if user_cr3 is not None else
           f"kernel CR3 {kernel_cr3:#x}, no PTI user page table found"]
    if user_cr3 is not None:
        shared = {"CPU entry Area", "ESPfix Area", "LDT remap"}
        uruns = _runs(space, user_cr3, notes)
        # cpu_entry_area aliases per-CPU pages; PTI also maps cpu_tss_rw at its own (direct-map) address,
        # for the SYSCALL entry's scratch word, so a page also seen there is that deliberate share.
        cea = {r.pa + i for r in uruns if CPU_ENTRY_AREA_BASE <= r.va < ESPFIX_BASE_ADDR
               for i in range(0, r.size, 4096)}
        for s, e, r in _spans([r for r in uruns if r.va >> 63 and not r.user]):
            region = layout.region_of(s)
            if region in shared or CPU_ENTRY_AREA_BASE <= s < ESPFIX_BASE_ADDR + (1 << 39):
                continue
            why = " (global: PTI shares it on purpose)" if r.flags & 0x100 else \
                " (also in cpu_entry_area: PTI's cpu_tss_rw share)" if r.pa in cea else ""
            what = "kernel-text-in-user-cr3" if not r.nx else "kernel-data-in-user-cr3"
            findings.append(Finding(what, s, e, f"{'executable' if not r.nx else 'data'} supervisor pages "
                                    f"[{region}] reachable from PTI user CR3 {user_cr3:#x}{why}", bool(why)))
    real = sum(not f.expected for f in findings)
    out = Audit(findings, log, notes)
    missed = out.gaps
    log.append(f"user/kernel isolation: {'incomplete, ' if missed else ''}{real} finding(s), "
               f"{len(findings) - real} expected PTI share(s)" +
               (f" in what could be read; {len(missed)} range(s) not examined" if missed else ""))
    return out
