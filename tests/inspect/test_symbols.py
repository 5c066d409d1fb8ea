"""``--symbols`` on real kernels: names resolve where the guest's own kallsyms and QEMU's gva2gpa say they
are, with KASLR; link-time symbol files (System.map, vmlinux) are slid by the offset the tables give.

Expected values: the guests' /proc/kallsyms (nokaslr and KASLR boots of one Debian 6.1 kernel, filtered as
meta.json says) and QEMU's gva2gpa answers recorded at capture time for every kept symbol.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inspect.support import (
    KASLR,
    NOKASLR,
    SYM_FIXTURES,
    cli,
    core,
    guest_address,
    guest_symbols,
    gva2gpa,
    kallsyms,
    one_line_error,
    system_map,
    unique_symbols,
    write_vmlinux,
)


def test_fixtures_say_how_kallsyms_was_filtered() -> None:
    for fx in SYM_FIXTURES:
        meta = json.loads((fx / "meta.json").read_text())
        k = meta["kallsyms"]
        assert k["file"] == "kallsyms" and "unchanged" in k["filter"] and k["guest_lines"] > 50_000
        assert {n for _a, _t, n in guest_symbols(fx)} <= set(k["symbols"]) and k["kept_lines"] == len(guest_symbols(fx))
    assert json.loads((KASLR / "meta.json").read_text())["kaslr"] is True
    assert guest_address(KASLR, "_text") != guest_address(NOKASLR, "_text")  # the boot really slid the kernel


@pytest.mark.parametrize("fx", SYM_FIXTURES, ids=[p.name for p in SYM_FIXTURES])
def test_every_symbol_resolves_where_qemu_translates_it(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qemu = gva2gpa(fx)
    names = [(n, a) for a, t, n in guest_symbols(fx) if t not in "Aa"]
    refs = [n for n, _a in names] + [f"{n}+0x18" for n, _a in names]
    r = cli(capsys, "translate", core(fx), "--symbols", kallsyms(fx), "--gva2gpa", "--json", *refs)
    assert r.code == 0, r.err
    got = json.loads(r.out)
    want_va = [a for _n, a in names] + [a + 0x18 for _n, a in names]
    assert [int(d["va"], 16) for d in got] == want_va
    for d, va in zip(got, want_va, strict=True):
        pa = qemu[va]
        assert (int(d["pa"], 16) if d["ok"] else None) == pa, (d["va"], d["va_symbol"])


@pytest.mark.parametrize("fx", SYM_FIXTURES, ids=[p.name for p in SYM_FIXTURES])
def test_labels_name_the_nearest_symbol_of_the_guest(fx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A unique symbol's address, 0x18 bytes in, and the physical address QEMU maps it to, are all labelled
    with that symbol — and the KASLR slide the file needs is none (kallsyms of the same boot)."""
    qemu = gva2gpa(fx)
    addrs = sorted({a for a, t, _n in guest_symbols(fx) if t not in "Aa"})
    # symbols at least 0x19 bytes from the next one: address+0x18 is still theirs
    cases = [(n, a) for n, a in unique_symbols(fx)
             if qemu.get(a + 0x18) is not None and all(not a < b <= a + 0x18 for b in addrs)]
    assert len(cases) > 20
    r = cli(capsys, "translate", core(fx), "--symbols", kallsyms(fx), "--json", *[f"{a + 0x18:#x}" for _n, a in cases])
    for d, (name, a) in zip(json.loads(r.out), cases, strict=True):
        assert d["va_symbol"] == f"{name}+0x18"
        if d["ok"]:
            assert int(d["pa"], 16) == qemu[a + 0x18] and d["pa_symbol"] == f"{name}+0x18"


@pytest.mark.parametrize("kind", ["kallsyms", "System.map", "vmlinux"])
def test_link_time_symbols_are_slid_onto_the_kaslr_kernel(kind: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The nokaslr boot's symbols are the link addresses; read as kallsyms, as a System.map, or from a
    vmlinux, and applied to the KASLR dump, every name must land where the KASLR guest's kallsyms says."""
    path = {"kallsyms": Path(kallsyms(NOKASLR)), "System.map": tmp_path / "System.map",
            "vmlinux": tmp_path / "vmlinux"}[kind]
    if kind == "System.map":
        path.write_text(system_map(NOKASLR))
    elif kind == "vmlinux":
        write_vmlinux(path, guest_symbols(NOKASLR), {})
    names = [(n, a) for a, t, n in guest_symbols(KASLR) if t not in "Aa"]
    r = cli(capsys, "translate", core(KASLR), "--symbols", str(path), "--gva2gpa", "--json", *[n for n, _a in names])
    assert r.code == 0 and r.err == "", r.err
    assert [int(d["va"], 16) for d in json.loads(r.out)] == [a for _n, a in names]
    slide = guest_address(KASLR, "_text") - guest_address(NOKASLR, "_text")
    given = cli(capsys, "translate", core(KASLR), "--symbols", str(path), "--kaslr-offset", hex(slide), "--json",
                "init_top_pgt")
    assert json.loads(given.out)[0]["va"] == f"{guest_address(KASLR, 'init_top_pgt'):#x}"


def test_a_wrong_offset_is_used_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "translate", core(KASLR), "--symbols", kallsyms(NOKASLR), "--kaslr-offset", "0", "--json",
            "init_top_pgt")
    assert json.loads(r.out)[0]["va"] == f"{guest_address(NOKASLR, 'init_top_pgt'):#x}"


def test_vmlinux_sizes_bound_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With ELF sizes a label stays inside its symbol: one page of init_top_pgt, nothing past it."""
    vm = tmp_path / "vmlinux"
    write_vmlinux(vm, guest_symbols(NOKASLR), {"init_top_pgt": 0x1000})
    base = guest_address(NOKASLR, "init_top_pgt")
    r = cli(capsys, "translate", core(NOKASLR), "--symbols", str(vm), "--json", f"{base + 0xFF8:#x}",
            f"{base + 0x1000:#x}")
    inside, past = json.loads(r.out)
    assert inside["va_symbol"] == "init_top_pgt+0xff8" and past["va_symbol"] is None


def test_per_cpu_offsets_never_label_and_are_not_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "translate", core(NOKASLR), "--symbols", kallsyms(NOKASLR), "--json", "0x6000")
    assert json.loads(r.out)[0]["va_symbol"] is None  # cpu_tss_rw is at per-CPU offset 0x6000
    bad = cli(capsys, "translate", core(NOKASLR), "--symbols", kallsyms(NOKASLR), "cpu_tss_rw")
    one_line_error(bad)
    assert "absolute" in bad.err


def test_text_output_labels_the_walk(capsys: pytest.CaptureFixture[str]) -> None:
    """init_top_pgt through the high map: the VA, the PD it is found in (level2_kernel_pgt, per kallsyms: the
    table's physical address lies inside the image) and the page are labelled."""
    r = cli(capsys, "translate", core(NOKASLR), "--symbols", kallsyms(NOKASLR), "init_top_pgt")
    lines = r.out.splitlines()
    assert lines[0].startswith(f"{guest_address(NOKASLR, 'init_top_pgt'):#018x} <init_top_pgt> read")
    assert any("table <level2_kernel_pgt>" in ln for ln in lines)
    assert "<init_top_pgt>" in lines[-1] and lines[-1].startswith("  => pa ")


def test_batch_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"va": "idt_table"}\n{"va": "0x1000", "cpl": 3}\n')
    r = cli(capsys, "translate", core(NOKASLR), "--symbols", kallsyms(NOKASLR), "--batch", str(batch), "--json")
    assert [d["va"] for d in json.loads(r.out)] == [f"{guest_address(NOKASLR, 'idt_table'):#x}", "0x1000"]
    batch.write_text('{"va": "no_such_symbol"}\n')
    bad = cli(capsys, "translate", core(NOKASLR), "--symbols", kallsyms(NOKASLR), "--batch", str(batch))
    one_line_error(bad)
    assert "b.jsonl:1:" in bad.err


def test_ptdump_labels_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    text = guest_address(KASLR, "_text")
    for fmt, start in (("linux", f"0x{text:016x}-"), ("qemu-tlb", f"{text:016x}: ")):
        r = cli(capsys, "ptdump", core(KASLR), "--symbols", kallsyms(KASLR), "--format", fmt)
        line = next(ln for ln in r.out.splitlines() if ln.startswith(start))
        assert line.endswith("  <startup_64>"), line
    plain = cli(capsys, "ptdump", core(KASLR), "--format", "qemu-tlb").out
    labelled = cli(capsys, "ptdump", core(KASLR), "--format", "qemu-tlb", "--symbols", kallsyms(KASLR)).out
    assert [ln.split("  <")[0] for ln in labelled.splitlines()] == plain.splitlines()  # only labels were added
    doc = json.loads(cli(capsys, "ptdump", core(KASLR), "--format", "json", "--symbols", kallsyms(KASLR)).out)
    run = next(r for r in doc["address_spaces"][0]["runs"] if int(r["va"], 16) == text)
    assert run["va_symbol"] == "startup_64" and run["pa_symbol"] == "startup_64"


BAD_FILES = [
    ("", "no symbols"), ("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
                         "placeholder"),
    ("0000000000000000 T _text\n0000000000000000 T startup_64\n", "kptr_restrict"),
    ("ffffffff81000000 T\n", "not a kallsyms/System.map line"), ("x" * 5000 + "\n", "longer than"),
    ("ffffffff81000000 T dup\nffffffff81000010 T dup\n", "ambiguous"),
]


@pytest.mark.parametrize("content, needle", BAD_FILES)
def test_bad_symbol_files(content: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "syms"
    f.write_text(content)
    r = cli(capsys, "translate", core(NOKASLR), "--symbols", str(f), "dup")
    one_line_error(r)
    assert needle in r.err, r.err


def test_bad_symbol_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in ((["--symbols", str(tmp_path)], "not a regular file"),
                         (["--symbols", str(tmp_path / "missing")], "No such file"),
                         (["--kaslr-offset", "0x200000"], "--symbols FILE, which was not given"),
                         ([], "give --symbols FILE")):
        r = cli(capsys, "translate", core(NOKASLR), *argv, "init_top_pgt")
        one_line_error(r)
        assert needle in r.err, (argv, r.err)
    elf = tmp_path / "stripped"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    one_line_error(cli(capsys, "translate", core(NOKASLR), "--symbols", str(elf), "init_top_pgt"))
