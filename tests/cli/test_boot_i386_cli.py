"""``earlymm boot --arch i386``: the timeline, the JSON contract, --until/--save-core through translate and
ptdump (and pyelftools), and bad input — one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlymm.cli.main import main

KERNEL_VA = 0xC010_0000  # _text: PAGE_OFFSET + 1 MiB


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra", [[], ["--pae"], ["--pv", "native", "--no-pse"]])
def test_boot_text(capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    code, out, err = run(capsys, "boot", "--arch", "i386", "--mem", "1G", *extra)
    assert code == 0 and err == "" and "FAIL" not in out
    for heading in ("startup_32", "setup_arch", "pagetable_setup_start", "pagetable_init", "paging_init", "end"):
        assert f"== {heading}\n" in out
    assert "outcome: booted" in out and "paravirt hooks:" in out
    assert ("PAE (pv native)" in out) == ("--pae" in extra)


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "boot", "--arch", "i386", "--pae", "--json", "--trace")
    doc = json.loads(out)
    assert code == 0 and doc["outcome"] == "booted" and doc["phase"] == "end"
    assert (doc["arch"], doc["paging"], doc["pv"], doc["profile"]) == ("i386", "pae", "native", "2.6.21")
    assert {"outcome", "reason", "phase", "completed", "stats", "machine_state", "invariants", "console",
            "events", "hooks", "table_pages", "kernel_at", "ramdisk_at", "source_ref"} <= set(doc)
    start = doc["hooks"]["pagetable_setup_start"]
    assert start["backend"] == "native" and [s["op"] for s in start["stores"]] == ["set_pgd"] * 3 + ["memset"]
    assert [p["pde"] for p in start["live_pdes"]] == [0, 1, 2, 4]
    assert [s["index"] for s in doc["hooks"]["pagetable_setup_done"]["stores"]] == [0]
    assert doc["invariants"] and all(i["ok"] for i in doc["invariants"])
    kinds = {e["event"] for e in doc["events"]}
    assert {"entry_store", "live_entry_changed", "table_page", "leaf_run", "pv_notify", "bootmem_alloc"} <= kinds
    assert doc["kernel_at"] == "0x100000" and doc["machine_state"]["paging"] == "pae"


@pytest.mark.parametrize("pae", [False, True])
@pytest.mark.parametrize("phase", ["startup_32", "setup_arch", "pagetable_setup_start", "pagetable_init",
                                   "paging_init"])
def test_until_and_saved_core_through_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str], pae: bool,
                                                phase: str) -> None:
    core = tmp_path / f"{phase}.core"
    code, out, _ = run(capsys, "boot", "--arch", "i386", *(["--pae"] if pae else []), "--until", phase,
                       "--save-core", str(core), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["outcome"] == "stopped" and doc["completed"][-1] == phase
    code, out, _ = run(capsys, "translate", str(core), "--json", hex(KERNEL_VA), "0x100000")
    kernel, ident = json.loads(out)
    assert code == 0 and kernel["pa"] == "0x100000"
    # The low identity map is head.S's until the PAE start hook overwrites its PDEs 0-5. The done hook's
    # 8-byte pgd[0] = pgd[3] lands in non-PAE PDE 0 as (kernel pmd page | P): until CR4.PAE the CPU reads
    # that pmd page as a page table, so 0x100000 (PTE 256) goes through the low half of pmd[128], which
    # maps 128 × 2 MiB = 0x10000000. With PAE on, the alias maps lowmem at 0 again.
    ident_pa = {"pagetable_setup_start": None, "pagetable_init": "0x10000000"}.get(phase, "0x100000") if pae \
        else "0x100000"
    assert ident["pa"] == ident_pa, (phase, ident)
    code, out, err = run(capsys, "ptdump", str(core), "--format", "qemu-mem")
    assert code == 0 and "unreadable" not in err
    assert ("0000000000000000-" in out) == (ident_pa is not None) and "00000000c0000000-" in out


def test_saved_core_reads_in_pyelftools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from elftools.elf.elffile import ELFFile

    core = tmp_path / "i386.core"
    assert run(capsys, "boot", "--arch", "i386", "--mem", "1G", "--save-core", str(core))[0] == 0
    with open(core, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 32 and elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_386"
        segs = list(elf.iter_segments())
        assert [n["n_name"] for n in segs[0].iter_notes()] == ["CORE", "QEMU", "EARLYMM"]
        assert all(s["p_type"] == "PT_LOAD" and s["p_paddr"] == s["p_vaddr"] for s in segs[1:])


def test_x86_64_accepts_pv_native(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "boot", "--pv", "native", "--until", "startup_64", "--json")
    assert code == 0 and json.loads(out)["completed"] == ["startup_64"]


@pytest.mark.parametrize("argv, needle", [
    (["--pae"], "--pae is an option of the i386 boot"),
    (["--no-pse"], "--no-pse is an option of the i386 boot"),
    (["--profile", "2.6.21"], "is an i386 kernel"),
    (["--until", "paging_init"], "not a phase of the x86-64 boot"),
    (["--arch", "i386", "--paging", "5"], "--paging means nothing with --arch i386"),
    (["--arch", "i386", "--paging", "4"], "--paging means nothing with --arch i386"),
    (["--arch", "i386", "--pool", "64"], "--pool means nothing"),
    (["--arch", "i386", "--variant", "rfc"], "--variant means nothing"),
    (["--arch", "i386", "--no-gbpages"], "--no-gbpages means nothing"),
    (["--arch", "i386", "--decompressor", "merged"], "--decompressor means nothing"),
    (["--arch", "i386", "--loader-paging", "4"], "--loader-paging means nothing"),
    (["--arch", "i386", "--no-la57"], "--no-la57 means nothing"),
    (["--arch", "i386", "--force-nx"], "--force-nx means nothing"),
    (["--arch", "i386", "--efi-loader", "EL32"], "--efi-loader means nothing"),
    (["--arch", "i386", "--kernel-at", "0x100000"], "runs where it was linked"),
    (["--arch", "i386", "--profile", "v3.9"], "is an x86-64 kernel"),
    (["--arch", "i386", "--until", "startup_64"], "not a phase of the i386 boot"),
    (["--arch", "i386", "--until", "nowhere"], "unknown phase"),
    (["--arch", "i386", "--pv", "xen", "--e820", "x"], "--e820 means nothing for a Xen PV domain"),
    (["--arch", "i386", "--pv", "xen", "--ebda", "0x9fc0"], "--ebda means nothing for a Xen PV domain"),
    (["--arch", "i386", "--pv", "xen", "--xen-write-cr3", "early"], "belongs to the x86-64 Xen guest"),
    (["--arch", "i386", "--pv", "xen", "--xen-guest-bug", "native-cpuid"], "belongs to the x86-64 Xen guest"),
    (["--arch", "i386", "--pv", "xen", "--xen-version", "4.17"], "belongs to the x86-64 Xen guest"),
    (["--arch", "i386", "--pv", "xen", "--dom0-mem", "1G"], "belongs to the x86-64 Xen guest"),
    (["--arch", "i386", "--pv", "xen", "--mem", "16M"], "domains of 32 MiB to 2 GiB"),
    (["--arch", "i386", "--pv", "xen", "--mem", "3G"], "domains of 32 MiB to 2 GiB"),
    (["--arch", "i386", "--pv", "xen", "--until", "startup_32"], "not a phase of the i386 --pv xen boot"),
    (["--arch", "i386", "--pv", "xen", "--html", "x.html"], "--html draws native boots"),
    (["--arch", "i386", "--until", "xen_start_kernel"], "not a phase of the i386 boot"),
    (["--arch", "i386", "--xen-seed", "3"], "--xen-seed needs --pv xen"),
    (["--arch", "x86_32"], "invalid choice"),
    (["--arch", "i386", "--mem", "65G"], "at most 64 GiB"),
    (["--arch", "i386", "--mem", "2M"], "smaller than the kernel"),
    (["--arch", "i386", "--image-size", "4K"], "needs at least"),
    (["--arch", "i386", "--ramdisk", "0x38000000:16M"], "initrd_addr_max"),
    (["--arch", "i386", "--ramdisk", "0x100000:16M"], "overlaps the kernel"),
])
def test_bad_input_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                   needle: str) -> None:
    core = tmp_path / "never.core"
    code, out, err = run(capsys, "boot", *argv, "--save-core", str(core))
    assert code == 2 and out == "" and not core.exists()
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("pae", [False, True])
def test_xen_json_and_core_through_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str], pae: bool) -> None:
    """--pv xen: the JSON names the 32-bit Xen build and its hypercalls; the done hook's one store is the
    shared_info pte (its machine frame | __PAGE_KERNEL 0x063, no conversion: set_pte_mfn); the saved core's
    CR3 is swapper_pg_dir's machine frame and translate walks it (PAE: 3 levels, 2-level: 2)."""
    core = tmp_path / "xen.core"
    pae_arg = ["--pae"] if pae else []
    code, out, _ = run(capsys, "boot", "--arch", "i386", *pae_arg, "--pv", "xen", "--mem", "32M", "--json",
                       "--save-core", str(core))
    doc = json.loads(out)
    assert code == 0 and doc["outcome"] == "booted" and doc["pv"] == "xen"
    x = doc["xen"]
    assert x["build"] == ("x86_32p" if pae else "x86_32") and x["addresses"] == "machine"
    assert x["hypervisor_virt_start"] == ("0xf5800000" if pae else "0xfc000000")
    assert x["swapper_pg_dir_pinned"] is pae and x["base_pointer_mfn"] == x["swapper_pg_dir_mfn"]
    assert {"mmu_update", "mmuext_op", "update_va_mapping"} <= set(x["hypercalls"])
    (store,) = doc["hooks"]["pagetable_setup_done"]["stores"]
    assert store["op"] == "set_pte_mfn" and store["new"] == "0x103063"  # shared_info at machine 0x103000
    assert doc["machine_state"]["cr3"] == hex(int(x["swapper_pg_dir_mfn"], 16) << 12)
    code, out, _ = run(capsys, "translate", str(core), hex(KERNEL_VA))
    assert code == 0 and ("PDPT" in out) == pae and "=> pa" in out
