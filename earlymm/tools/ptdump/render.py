"""What ``earlymm ptdump`` and gdb's ``earlymm-ptdump`` print: one place that turns address spaces into the
chosen format (or audit findings), so the two front ends cannot drift apart.

Each format's module is imported when that format is asked for: a command pays start-up only for what it
prints (``--format qemu-tlb`` needs neither Linux's region layout nor JSON nor the audits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from earlymm.tools.ptdump import qemu
from earlymm.tools.ptdump.engine import Note, Tree, expand
from earlymm.tools.ptdump.space import Space

if TYPE_CHECKING:
    from earlymm.tools.ptdump.json_doc import SpaceDoc

FORMATS = ("linux", "qemu-tlb", "qemu-mem", "json")


class RenderError(ValueError):
    """A format or audit that does not apply to this paging mode."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """What a dump or an audit prints, and the counts its exit status comes from."""

    parts: list[str]  # for stdout, in order: written part by part, a large dump is not copied again
    messages: list[str]  # for stderr: collapsed/unreadable ranges, audit logs
    findings: int = 0  # audit findings (expected PTI shares not counted)
    gaps: int = 0  # ranges an audit could not examine: the audit is incomplete

    @property
    def text(self) -> str:
        return "".join(self.parts)


def note_text(n: Note, prefix: str = "") -> str:
    more = f", {n.leaves} leaves not listed" if n.leaves else ""
    return f"{prefix}{n.kind} 0x{n.start:016x}-0x{n.end:016x}: {n.detail}{more}"


def text_of(space: Space, fmt: str, *, crlf: bool, max_tables: int, max_leaves: int) -> tuple[str, Tree]:
    """One address space in a text format (linux, qemu-tlb, qemu-mem)."""
    if fmt == "linux":
        from earlymm.tools.ptdump import linux, regions

        if not space.mode.is_ia32e:
            raise RenderError(f"--format linux follows the x86-64 kernel's dump: {space.mode.value} paging has "
                              "no such layout (use qemu-tlb, qemu-mem or json)")
        tree = space.tree("linux", keep_nonpresent=True, max_tables=max_tables)
        layout = regions.detect(expand(tree, max_leaves=max_leaves), [r.span for r in tree.sem.rows],
                                len(tree.sem.rows) == 5)
        text, _wx = linux.dump(tree, layout.markers())
        return (text.replace("\n", "\r\n") if crlf else text), tree
    tree = space.tree("qemu", max_tables=max_tables)
    if fmt == "qemu-tlb":
        return qemu.tlb_text(tree, crlf, max_leaves), tree
    return qemu.mem_text(tree, crlf, max_leaves), tree


def dump(spaces: list[Space], fmt: str, image_label: str, *, crlf: bool = False, max_tables: int,
         max_leaves: int) -> Rendered:
    """Every space in ``fmt``; several spaces are separated by '# cr3 …' lines (JSON: one document)."""
    if fmt == "json":
        from earlymm.tools.ptdump.json_doc import json_text, space_doc
    out: list[str] = []
    messages: list[str] = []
    docs: list[SpaceDoc] = []
    for space in spaces:
        prefix = f"cr3 {space.cr3:#x}: " if len(spaces) > 1 else ""
        if fmt == "json":
            tree = space.tree("arch", max_tables=max_tables)
            docs.append(space_doc(tree, space.cr3, max_leaves))
        else:
            text, tree = text_of(space, fmt, crlf=crlf, max_tables=max_tables, max_leaves=max_leaves)
            if len(spaces) > 1:
                out.append(f"# cr3 {space.cr3:#x}{chr(13) if crlf else ''}\n")
            out.append(text)
        messages += [note_text(n, prefix) for n in tree.notes]
    if docs:
        out += json_text(image_label, docs)
    return Rendered(out, messages)


def run_audits(spaces: list[Space], *, check_wx: bool, check_user_kernel: bool) -> Rendered:
    """Findings one per line; PTI's deliberate shares go to the messages as 'expected: …', uncounted.
    Every range a check could not examine (unreadable table, table limit, collapsed repeat) is one
    'incomplete: …' line after the findings, and makes the result ``incomplete``; the other notes
    (reserved bits, bad entries) go to the messages."""
    from earlymm.tools.ptdump import audit

    lines: list[str] = []
    messages: list[str] = []
    gap_lines: list[str] = []
    seen: set[str] = set()  # the same note can come from both checks and from both PTI tables
    for space in spaces:
        if not space.mode.is_ia32e:
            raise RenderError(f"the audits follow the x86-64 kernel: {space.mode.value} paging is not audited")
        layout = audit.layout_of(space)
        prefix = f"cr3 {space.cr3:#x}: " if len(spaces) > 1 else ""
        for check, on in ((audit.check_wx, check_wx), (audit.check_user_kernel, check_user_kernel)):
            if on:
                a = check(space, layout)
                lines += [f.line() for f in a.findings if not f.expected]
                messages += [f"expected: {f.line()}" for f in a.findings if f.expected] + a.log
                for n in a.notes:
                    text = note_text(n, prefix)
                    if text in seen:
                        continue
                    seen.add(text)
                    (gap_lines if n.kind in audit.GAP_KINDS else messages).append(
                        f"incomplete: {text}" if n.kind in audit.GAP_KINDS else f"note: {text}")
    if gap_lines:
        messages.append(f"audit incomplete: {len(gap_lines)} range(s) could not be examined, so no verdict "
                        "covers them")
    return Rendered(["".join(f"{ln}\n" for ln in lines + gap_lines)], messages, len(lines), len(gap_lines))
