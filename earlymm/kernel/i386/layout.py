"""The 2.6.21 i386 kernel image's layout: the symbol addresses head.S and the mm code use.

Linked at ``PAGE_OFFSET + LOAD_PHYSICAL_ADDR`` (0xC0100000) and run there: 2.6.21's head.S addresses its
data as ``symbol - __PAGE_OFFSET`` until paging is on, so the loader must put it at 1 MiB. The order is
vmlinux.lds.S's: text and read-only data, data (the IDT, the init task's stack), the init sections
(``boot_params``, ``boot_command_line``) up to ``__init_end``, then .bss — ``.bss.page_aligned`` first,
which is ``swapper_pg_dir`` and ``empty_zero_page`` (head.S) — ``__bss_stop``, ``_end``, and ``pg0`` at
the next page, where head.S builds its page tables. Real values depend on the build; these are consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

from earlymm.kernel.i386.consts import LOAD_PHYSICAL_ADDR, PAGE_OFFSET, PAGE_SIZE, THREAD_SIZE

TEXT_VA = PAGE_OFFSET + LOAD_PHYSICAL_ADDR
DEFAULT_IMAGE_SIZE = 3 << 20  # _end - _text of a 2.6.21 distribution kernel is around 3 MiB
DATA_SIZE = 0x1_0000  # data and init sections the model places symbols in
BSS_SIZE = 0x4_0000
MIN_IMAGE_SIZE = 0x1_0000 + DATA_SIZE + BSS_SIZE


@dataclass(frozen=True, slots=True)
class I386Layout:
    """Link-time virtual addresses of the symbols the model uses."""

    image_size: int
    symbols: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.symbols[name]

    @property
    def text(self) -> int:
        return self.symbols["_text"]

    @property
    def end(self) -> int:
        return self.symbols["_end"]

    def phys(self, name: str) -> int:
        """``symbol - __PAGE_OFFSET``: where head.S reaches it before paging (the image runs where linked)."""
        return self.symbols[name] - PAGE_OFFSET


def build_layout(image_size: int = DEFAULT_IMAGE_SIZE) -> I386Layout:
    """The symbols of an image of ``image_size`` bytes (``_end - _text``, rounded up to whole pages)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"an i386 kernel image needs at least {MIN_IMAGE_SIZE >> 10} KiB (_end - _text)")
    size = (image_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if TEXT_VA + size > 0xF000_0000:
        raise ValueError(f"a kernel image of {size:#x} bytes does not fit below the vmalloc area")
    text = TEXT_VA
    s: dict[str, int] = {"_text": text, "startup_32": text, "ignore_int": text + 0x400, "start_kernel": text + 0x1000,
                         "L6": text + 0x3F0}
    end = text + size
    bss = end - BSS_SIZE
    data = (bss - DATA_SIZE) & ~(THREAD_SIZE - 1)  # init_thread_union is THREAD_SIZE aligned
    s.update({"idt_table": data, "boot_gdt_table": data + 0x800, "cpu_gdt_table": data + 0x900,
              "kernel_vars": data + 0x1000, "init_pg_tables_end": data + 0x1000,
              "init_thread_union": data + 0x2000, "__init_begin": data + 0x8000, "boot_params": data + 0x8000,
              "boot_command_line": data + 0x9000, "__init_end": data + 0xA000})
    s.update({"__bss_start": bss, "swapper_pg_dir": bss, "empty_zero_page": bss + PAGE_SIZE,
              "__bss_stop": end, "_end": end, "pg0": end})
    return I386Layout(size, s)
