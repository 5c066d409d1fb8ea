"""Early microcode loading on the boot CPU, as far as it touches memory: whether the loader runs at all
(vendor, family, hypervisor, ``dis_ucode_ldr``), and, when it does, the initrd's cpio searched and the
update read through the direct map — the first early page faults after ``copy_bootdata``.

Models ``load_ucode_bsp()`` of arch/x86/kernel/microcode_core_early.c @ v3.9 (Intel family ≥ 6 only; the
AMD early loader came in 3.11) and of arch/x86/kernel/cpu/microcode/core.c @ 6.1 (Intel family ≥ 6, AMD
family ≥ 0x10, ``check_loader_disabled_bsp``). Differences: the v3.9 model reads the ramdisk at its 64-bit
address (``ext_ramdisk_image`` included), as later kernels do, so a ramdisk above 4 GiB is read where it
is; AMD's ``amd_check_current_patch_level`` (a final patch level in MSR_AMD64_PATCH_LEVEL) is not
modelled — the model's CPU never has one.
"""

from __future__ import annotations

import struct

from earlymm.arch.cpuid import Vendor
from earlymm.kernel.boot_data import ramdisk_range
from earlymm.kernel.consts import COMMAND_LINE_SIZE
from earlymm.kernel.context import KernelContext
from earlymm.kernel.cpufeature import X86Feature, boot_cpu_has, x86_cpuid_vendor, x86_family
from earlymm.kernel.events import Note

UCODE_PATHS = {Vendor.INTEL: b"kernel/x86/microcode/GenuineIntel.bin",  # intel.c ucode_path[]
               Vendor.AMD: b"kernel/x86/microcode/AuthenticAMD.bin"}  # amd.c ucode_path[]
UCODE_MAGIC = 0x0041_4D44
UCODE_EQUIV_CPU_TABLE_TYPE, UCODE_UCODE_TYPE = 0, 1


def load_ucode_bsp(ctx: KernelContext) -> None:
    cpu = ctx.cpu
    vendor, family = x86_cpuid_vendor(cpu), x86_family(cpu.cpuid(1)[0])
    who = f"{vendor.value if vendor else 'unknown'} family {family:#x}"
    if ctx.profile.ucode_loader == "v3.9":
        if vendor is Vendor.INTEL and family >= 6:
            load_ucode_vendor_bsp(ctx, Vendor.INTEL)
        else:
            ctx.emit(Note(f"early microcode: not loaded on an {who} CPU (v3.9 loads Intel family >= 6 only)"))
        return
    if not (vendor is Vendor.INTEL and family >= 6) and not (vendor is Vendor.AMD and family >= 0x10):
        ctx.emit(Note(f"early microcode: not loaded on an {who} CPU (Intel >= 6, AMD >= 0x10 only)"))
        return
    if check_loader_disabled_bsp(ctx):
        return
    load_ucode_vendor_bsp(ctx, vendor)


def check_loader_disabled_bsp(ctx: KernelContext) -> bool:
    """6.1: ``dis_ucode_ldr`` starts true; the hypervisor bit CPUID.1:ECX[31] keeps it so; otherwise the
    loader is enabled unless ``dis_ucode_ldr`` is on the command line (read from ``boot_command_line``)."""
    if boot_cpu_has(ctx.cpu, X86Feature.HYPERVISOR):
        ctx.emit(Note("early microcode: loader disabled (CPUID.1:ECX[31], running under a hypervisor)"))
        return True
    if cmdline_find_option_bool(ctx, "dis_ucode_ldr"):
        ctx.emit(Note("early microcode: loader disabled (dis_ucode_ldr on the command line)"))
        return True
    return False


def cmdline_find_option_bool(ctx: KernelContext, option: str) -> bool:
    """``cmdline_find_option_bool(boot_command_line, option) > 0``: the option as a whole word
    (arch/x86/lib/cmdline.c), in the kernel's copy of the command line."""
    raw = ctx.cpu.read(ctx.sym("boot_command_line"), COMMAND_LINE_SIZE)
    text = raw.split(b"\0", 1)[0].decode("latin-1")
    return option in text.split()


def load_ucode_vendor_bsp(ctx: KernelContext, vendor: Vendor) -> None:
    """``load_ucode_intel_bsp``/``load_ucode_amd_bsp``: ``find_microcode_in_initrd`` (the initrd through
    ``PAGE_OFFSET``), then the vendor's format scanned for updates."""
    image, size = ramdisk_range(ctx)
    if not image or not size:
        return
    found = find_cpio_data(ctx, UCODE_PATHS[vendor], ctx.va(image), size)
    if found is None:
        ctx.emit(Note(f"early microcode: no {UCODE_PATHS[vendor].decode()} in the initrd"))
        return
    data, length = found
    n = scan_intel(ctx, data, length) if vendor is Vendor.INTEL else scan_amd(ctx, data, length)
    ctx.emit(Note(f"early microcode: {n} update(s) found in the initrd at {image:#x}"))


def scan_intel(ctx: KernelContext, data: int, length: int) -> int:
    """Walk the Intel update headers (SDM Vol. 3A §9.11.1: total size at offset 32, 2048 when 0)."""
    off, blobs = 0, 0
    while off + 48 <= length:
        hdr = ctx.cpu.read(data + off, 48)
        total = struct.unpack_from("<I", hdr, 32)[0] or 2048
        if total < 48 or off + total > length:
            break
        blobs += 1
        off += total
    return blobs


def scan_amd(ctx: KernelContext, data: int, length: int) -> int:
    """An AMD container: magic, the equivalence table (section type 0) mapping this CPU's signature to an
    equivalence id, then patch sections (type 1) whose header's ``processor_rev_id`` is matched against
    it (amd.c ``find_equiv_id``, ``scan_containers``)."""
    if length < 12:
        return 0
    magic, kind, table_len = struct.unpack("<III", ctx.cpu.read(data, 12))
    if magic != UCODE_MAGIC or kind != UCODE_EQUIV_CPU_TABLE_TYPE:
        return 0
    sig = ctx.cpu.cpuid(1)[0]
    table = ctx.cpu.read(data + 12, min(table_len, length - 12))
    equiv = 0
    for off in range(0, len(table) - 15, 16):
        installed, _mask, _cmp, eid, _res = struct.unpack_from("<IIIHH", table, off)
        if not installed:
            break
        if installed == sig:
            equiv = eid
    pos, patches = 12 + table_len, 0
    while equiv and pos + 8 <= length:
        kind, size = struct.unpack("<II", ctx.cpu.read(data + pos, 8))
        if kind != UCODE_UCODE_TYPE or size < 32 or pos + 8 + size > length:
            break
        rev_id = struct.unpack("<H", ctx.cpu.read(data + pos + 8 + 24, 2))[0]  # processor_rev_id
        patches += rev_id == equiv
        pos += 8 + size
    return patches


def find_cpio_data(ctx: KernelContext, path: bytes, start: int, size: int) -> tuple[int, int] | None:
    """``find_cpio_data()`` (lib/earlycpio.c): walk newc headers until ``path`` or the end."""
    pos, end = start, start + size
    while pos + 110 <= end:
        hdr = ctx.cpu.read(pos, 110)
        if hdr[:6] not in (b"070701", b"070702"):
            return None
        fields = [int(hdr[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name_at = pos + 110
        name = ctx.cpu.read(name_at, max(namesize - 1, 0))
        data = (name_at + namesize + 3) & ~3
        if name == path:
            return data, filesize
        if name == b"TRAILER!!!":
            return None
        pos = (data + filesize + 3) & ~3
    return None
