"""Symbols of a vmlinux ELF (its ``.symtab``), read with pyelftools.

Every defined function, object and untyped symbol becomes a ``Symbol`` with its ELF size; section and
file symbols are left out. ``SHN_ABS`` values and symbols of the ``.data..percpu`` section (per-CPU
offsets, linked at 0 on x86-64) are absolute: looked up by name, never slid or used as labels.
"""

from __future__ import annotations

from typing import Any

from earlymm.tools.symbols.table import MAX_SYMBOLS, Symbol, SymbolError, SymbolTable, mark_absolute

PERCPU_SECTION = ".data..percpu"
KINDS = {"STT_FUNC": "t", "STT_OBJECT": "d", "STT_NOTYPE": "t", "STT_TLS": "d"}


def read_elf(path: str) -> SymbolTable:
    """The symbol table of the ELF file at ``path``. Raises ``SymbolError`` (one line)."""
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
    except ImportError:
        raise SymbolError(f"{path}: reading a vmlinux needs pyelftools (pip install pyelftools)") from None
    try:
        with open(path, "rb") as f:
            elf: Any = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise SymbolError(f"{path}: the ELF file has no .symtab (a stripped vmlinux; Debian ships the one "
                                  "with symbols in linux-image-…-dbg)")
            names = {i: s.name for i, s in enumerate(elf.iter_sections())}
            syms: list[Symbol] = []
            for s in symtab.iter_symbols():
                kind = KINDS.get(s["st_info"]["type"])
                shndx = s["st_shndx"]
                if kind is None or not s.name or shndx == "SHN_UNDEF":
                    continue
                if len(syms) >= MAX_SYMBOLS:
                    raise SymbolError(f"{path}: more than {MAX_SYMBOLS} symbols")
                glob = s["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                absolute = shndx == "SHN_ABS" or (isinstance(shndx, int) and names.get(shndx) == PERCPU_SECTION)
                syms.append(Symbol(s.name, int(s["st_value"]), ("A" if absolute else kind.upper() if glob else kind),
                                   int(s["st_size"]), absolute=absolute))
    except OSError as e:
        raise SymbolError(f"cannot read symbol file {path}: {e.strerror or e}") from None
    except (ELFError, ValueError, KeyError, IndexError, AssertionError) as e:
        if isinstance(e, SymbolError):
            raise
        raise SymbolError(f"{path}: not a readable ELF file ({type(e).__name__}: {e})") from None
    if not syms:
        raise SymbolError(f"{path}: the ELF .symtab defines no symbols")
    return SymbolTable(mark_absolute(syms), path, "vmlinux")
