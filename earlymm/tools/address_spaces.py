"""Every address space an image holds: each CPU note's CR3, the PTI partner of each (kernel ↔ user page
table, recognised as ``--check-user-kernel`` does), and CR3 values the user names — one ``Space`` per
distinct top-level table, with every reason it is included."""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.arch.modes import Features
from earlymm.hw.memory import FrameSource
from earlymm.images import CpuState
from earlymm.tools.machine_view import RegOverrides, SetupError, infer_registers
from earlymm.tools.ptdump.audit import pti_pair
from earlymm.tools.ptdump.space import Space, open_space


@dataclass
class NamedSpace:
    space: Space
    sources: list[str]  # "CPU 0", "CPU 0 PTI user page table", "--cr3"

    @property
    def label(self) -> str:
        return ", ".join(self.sources)


def image_spaces(source: FrameSource, notes: list[tuple[CpuState, int | None]], cr3s: list[int],
                 ov: RegOverrides, features: Features, *, absent_zero: bool) -> list[NamedSpace]:
    """The spaces, CPU notes first (each followed by its PTI partner), then ``cr3s``. ``ov`` overrides
    CR0/CR4/EFER of every note (and describes the machine when there is no note). Raises ``SetupError``."""
    out: list[NamedSpace] = []
    by_root: dict[int, NamedSpace] = {}

    def add(space: Space, why: str) -> None:
        key = space.root("arch")
        have = by_root.get(key)
        if have is None:
            by_root[key] = have = NamedSpace(space, [])
            out.append(have)
        if why not in have.sources:
            have.sources.append(why)

    for i, (note, efer) in enumerate(notes):
        regs = infer_registers(note, RegOverrides(ov.cr0, None, ov.cr4, ov.efer if ov.efer is not None else efer))
        space = open_space(source, regs, features, absent_zero=absent_zero)
        add(space, f"CPU {i}")
        if space.mode.is_ia32e:
            kernel, user = pti_pair(space)
            if user is not None:
                other, what = (user, "user") if kernel == space.cr3 else (kernel, "kernel")
                add(space.with_cr3(other), f"CPU {i} PTI {what} page table")
    base = notes[0] if notes else (None, None)
    for cr3 in cr3s:
        efer = ov.efer if ov.efer is not None else base[1]
        regs = infer_registers(base[0], RegOverrides(ov.cr0, cr3, ov.cr4, efer))
        add(open_space(source, regs, features, absent_zero=absent_zero), "--cr3")
    if not out:
        raise SetupError("the image has no CPU state: give --cr3 (or --regs FILE with QEMU's info registers)")
    return out
