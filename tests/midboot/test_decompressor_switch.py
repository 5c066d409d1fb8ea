"""The real decompressor's 4→5-level switch under QEMU's BIOS, and the model's trampoline placement for the
same inputs (issue 10 item 6).

The measurement (``earlymm.tools.midboot.lowmem``) comes from QEMU's CPU log of the code run below 640 KiB
during a real boot, not from the model: the trampoline is the CR3 the CPU returned to 64-bit mode with.
The inputs the placement is computed from are the real ones: the loader's zero page (its e820 table, its
EFI loader signature) and the BIOS data area, both read from the stopped guest.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from earlymm.tools.midboot.fixture import load_fixture
from earlymm.tools.midboot.lowmem import LowMemError, bda_words, measure, parse_log
from tests.midboot.support import MIDBOOT, five_level, model_placement

MEASURED = [p for p in MIDBOOT if (p / "decompressor.json").is_file()]
SWITCHED = [p for p in MEASURED if (load_fixture(p).decompressor or {}).get("switch")]
# arch/x86/boot/compressed/pgtable.h (6.1): the table at offset 0 of the 8 KiB, the code one page up
TRAMPOLINE_32BIT_PGTABLE_OFFSET, TRAMPOLINE_32BIT_CODE_OFFSET = 0, 0x1000
X86_CR4_LA57, X86_CR0_PG = 1 << 12, 1 << 31


def test_the_measured_machines_are_there() -> None:
    """5-level boots with the switch measured (2 GiB and 12 GiB), and an LA57 CPU told no5lvl (no switch)."""
    fxs = [load_fixture(p) for p in MEASURED]
    assert {fx.meta["mem"] for fx in fxs if fx.decompressor and fx.decompressor["switch"]} >= {"2G", "12G"}
    assert any(fx.la57 and not (fx.decompressor or {})["switch"] for fx in fxs)


@pytest.mark.parametrize("path", MEASURED, ids=[p.name for p in MEASURED])
def test_the_fixture_holds_what_its_log_shows(path: Path) -> None:
    """decompressor.json is the measurement of the log window it keeps; the BIOS data area words in it (and
    in meta.json, which the model's arguments come from) are those of the recorded 256 bytes."""
    fx = load_fixture(path)
    dec = fx.decompressor
    assert dec is not None
    log = gzip.decompress((path / dec["log"]).read_bytes()).decode().splitlines()
    switch = measure(parse_log(log))
    assert (switch.to_json() if switch else None) == dec["switch"]
    assert bda_words(fx.bda()) == dec["bios_data_area"] == fx.machine["bios_data_area"]


@pytest.mark.parametrize("path", MEASURED, ids=[p.name for p in MEASURED])
def test_a_switch_ran_exactly_when_the_kernel_runs_5_level(path: Path) -> None:
    """6.1 configure_5level_paging: the trampoline runs only when the paging mode must change, i.e. (the
    decompressor is entered 4-level) when the CPU has LA57 and no5lvl is not given — and the kernel then
    finds CR4.LA57 set (check_la57_support) and runs 5-level."""
    fx = load_fixture(path)
    switched = bool((fx.decompressor or {})["switch"])
    assert switched == (fx.la57 and "no5lvl" not in fx.meta["append"].split()) == five_level(fx)


@pytest.mark.parametrize("path", SWITCHED, ids=[p.name for p in SWITCHED])
def test_the_switch_is_6_1s_toggle(path: Path) -> None:
    """What head_64.S trampoline_32bit_src does, as the CPU log shows it: 64-bit code at the code page, a
    far return to a 32-bit segment, paging off, CR3 = the trampoline's table, CR4.LA57 complemented (btcl)
    and nothing else in CR4, paging on, back in 64-bit mode with the new table."""
    fx = load_fixture(path)
    sw = (fx.decompressor or {})["switch"]
    table, code = int(sw["trampoline"], 16), int(sw["code"], 16)
    assert code == table - TRAMPOLINE_32BIT_PGTABLE_OFFSET + TRAMPOLINE_32BIT_CODE_OFFSET
    assert int(sw["cr4_before"], 16) ^ int(sw["cr4_after"], 16) == X86_CR4_LA57
    assert sw["direction"] == "4→5"
    modes = [s["mode"] for s in sw["steps"]]
    assert modes[0] == modes[-1] == "CS64" and "CS32" in modes
    off = [s for s in sw["steps"] if not int(s["cr0"], 16) & X86_CR0_PG]
    assert off and all(s["mode"] == "CS32" for s in off)
    assert {int(s["cr3"], 16) for s in off} <= {int(sw["cr3_before"], 16), table}
    assert int(sw["steps"][-1]["cr3"], 16) == table and int(sw["cr3_before"], 16) != table


@pytest.mark.parametrize("path", SWITCHED, ids=[p.name for p in SWITCHED])
def test_model_places_the_trampoline_where_the_real_decompressor_did(path: Path) -> None:
    """The model's find_trampoline_placement, given the real zero page and the real BIOS data area, picks
    the page the real decompressor used."""
    fx = load_fixture(path)
    assert model_placement(fx) == int((fx.decompressor or {})["switch"]["trampoline"], 16)


# -- the measurement itself can fail ------------------------------------------------------------------------
def _window(path: Path) -> list[str]:
    dec = load_fixture(path).decompressor or {}
    return gzip.decompress((path / dec["log"]).read_bytes()).decode().splitlines()


def test_a_window_without_the_la57_toggle_is_refused() -> None:
    lines = _window(SWITCHED[0])
    last_cr4 = max(i for i, ln in enumerate(lines) if ln.startswith("CR0="))
    lines[last_cr4] = re.sub(r"CR4=([0-9a-f]+)", lambda m: f"CR4={int(m[1], 16) & ~X86_CR4_LA57:0{len(m[1])}x}",
                             lines[last_cr4])
    with pytest.raises(LowMemError, match=r"CR4\.LA57 did not change"):
        measure(parse_log(lines))


def test_no_long_mode_code_below_640k_is_no_switch() -> None:
    lines = [re.sub(r"^EFER=[0-9a-f]+", "EFER=0000000000000000", ln) for ln in _window(SWITCHED[0])]
    assert measure(parse_log(lines)) is None


def test_pcs_are_linear_addresses() -> None:
    """Real mode and 32-bit code: CS.base + EIP (the setup code's CS 0x1020 has base 0x10200); 64-bit: RIP."""
    real_mode = ["EAX=00001020 EBX=00000000 ECX=00000000 EDX=00000000",
                 "EIP=0000006c EFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0",
                 "CS =1020 00010200 0000ffff 00009b00",
                 "CR0=00000010 CR2=00000000 CR3=00000000 CR4=00000000", "EFER=0000000000000000"]
    (d,) = parse_log(real_mode)
    assert (d.pc, d.mode, d.long_mode) == (0x1026C, "real", False)
    steps = list(parse_log(_window(SWITCHED[0])))
    assert steps[0].mode == "CS64" and steps[0].pc == int((load_fixture(SWITCHED[0]).decompressor or {})
                                                          ["switch"]["code"], 16)


def test_a_dump_without_control_registers_is_refused() -> None:
    with pytest.raises(LowMemError, match="without CR0, CR3, CR4, EFER"):
        list(parse_log(["EAX=00000000", "EIP=00000000", "CS =0000 00000000 0000ffff 00009b00"]))
