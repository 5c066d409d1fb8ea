"""Early microcode loading on the boot CPU, as far as it touches memory: the initrd's cpio is searched
and the update read through the direct map — the first early page faults after ``copy_bootdata``.
"""

from __future__ import annotations

import struct

from earlymm.kernel.boot_data import ramdisk_range
from earlymm.kernel.context import KernelContext
from earlymm.kernel.events import Note

INTEL_UCODE_PATH = b"kernel/x86/microcode/GenuineIntel.bin"  # ucode_path[] of the Intel early loader


def load_ucode_bsp(ctx: KernelContext) -> None:
    """Early Intel microcode (arch/x86/kernel/microcode_intel_early.c @ v3.9): find the microcode file
    in the initrd's leading uncompressed cpio, reading it through the direct map, then scan its
    microcode headers. Difference: the model uses the 64-bit ramdisk address (``ext_ramdisk_image``
    included), as later kernels do, so a ramdisk above 4 GiB is read where it is."""
    image, size = ramdisk_range(ctx)
    if not image or not size:
        return
    start = ctx.va(image)
    found = find_cpio_data(ctx, INTEL_UCODE_PATH, start, size)
    if found is None:
        ctx.emit(Note("early microcode: no microcode file in the initrd"))
        return
    data, length = found
    off, blobs = 0, 0
    while off + 48 <= length:
        hdr = ctx.cpu.read(data + off, 48)
        total = struct.unpack_from("<I", hdr, 32)[0] or 2048
        if total < 48 or off + total > length:
            break
        blobs += 1
        off += total
    ctx.emit(Note(f"early microcode: {blobs} update(s) found in the initrd at {image:#x}"))


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
