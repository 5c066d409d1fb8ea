"""Inputs as people have them: ``--regs`` (QEMU's ``info registers``) for raw images and cores without a note,
and ``boot --e820`` from a kernel log or ``/sys/firmware/memmap``.

Expected values: QEMU's gva2gpa and info tlb answers of the capture, the guest's own console (its
``BIOS-e820:``/``user:`` lines, read here by the test's own regular expression) and the e820 table in the
zero page QEMU's loader handed the kernel (decoded here from the boot protocol's layout).
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import pytest

from earlymm.cli.boot_args import read_e820
from earlymm.cli.common import UsageError
from earlymm.hw.memory import Region, RegionType
from earlymm.images import open_image, write_qemu_core
from earlymm.images.minimize import read_capture_text
from earlymm.images.monitor_text import parse_gva2gpa_file
from tests.inspect.support import FIXTURES, KASLR, NOKASLR, cli, one_line_error

E820_RE = re.compile(r"(BIOS-e820|user): \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] (.+)$")
TYPES = {"usable": RegionType.RAM, "reserved": RegionType.RESERVED, "ACPI data": RegionType.ACPI,
         "ACPI NVS": RegionType.NVS}
ZERO_PAGE_TYPES = {1: RegionType.RAM, 2: RegionType.RESERVED, 3: RegionType.ACPI, 4: RegionType.NVS}


def frames(fixture: Path) -> list[tuple[int, bytes]]:
    with open_image(fixture / "core.elf.gz") as img:
        return [(p, bytes(img.frame(p) or b"")) for lo, hi in img.ranges() for p in range(lo >> 12, hi >> 12)]


def raw_image(fixture: Path, path: Path) -> None:
    """The fixture's memory as a flat dump (sparse: only the pages the fixture holds are written)."""
    with open(path, "wb") as f:
        for pfn, data in frames(fixture):
            f.seek(pfn << 12)
            f.write(data)


def samples(fixture: Path) -> list[tuple[int, int | None]]:
    return parse_gva2gpa_file(read_capture_text(fixture, "gva2gpa.txt"))


@pytest.mark.parametrize("fixture", [NOKASLR, KASLR], ids=["nokaslr", "kaslr-5level"])
def test_raw_image_with_regs_answers_like_qemu(fixture: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "mem.raw"
    raw_image(fixture, raw)
    want = samples(fixture)
    no_regs = cli(capsys, "translate", str(raw), "--gva2gpa", "0x1000")
    one_line_error(no_regs)
    assert "--regs" in no_regs.err
    r = cli(capsys, "translate", str(raw), "--regs", str(fixture / "registers.txt"), "--absent", "zero", "--gva2gpa",
            "--json", *[f"{va:#x}" for va, _pa in want])
    assert r.code == 0, r.err
    got = [int(d["pa"], 16) if d["ok"] else None for d in json.loads(r.out)]
    assert got == [pa for _va, pa in want]


def test_core_without_a_note_with_regs_dumps_like_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare.elf"
    write_qemu_core(bare, frames(NOKASLR), [])
    assert open_image(bare).cpus == []
    r = cli(capsys, "ptdump", str(bare), "--regs", str(NOKASLR / "registers.txt"), "--format", "qemu-tlb", "--crlf")
    assert r.code == 0, r.err
    assert r.out.encode() == gzip.decompress((NOKASLR / "tlb.txt.gz").read_bytes())


def test_all_cpus_and_32bit_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``info registers -a``: one block per CPU#n; --cpu picks one. Registers printed with 32-bit names (a CPU
    outside 64-bit mode) are read too."""
    regs = (NOKASLR / "registers.txt").read_text().replace("\r", "")
    other = re.sub(r"CR3=[0-9a-f]+", "CR3=0000000002a10000", regs).replace("CPU#0", "CPU#1")
    both = tmp_path / "all.txt"
    both.write_text(regs + other)
    bare = tmp_path / "bare.elf"
    write_qemu_core(bare, frames(NOKASLR), [])
    for cpu, cr3 in ((0, re.search(r"CR3=([0-9a-f]+)", regs)[1]), (1, "2a10000")):  # type: ignore[index]
        r = cli(capsys, "translate", str(bare), "--regs", str(both), "--cpu", str(cpu), "--json", "0xffffffff81000000")
        assert json.loads(r.out)[0]["levels"][0]["table"] == f"{int(cr3, 16) & ~0xFFF:#x}"
    one_line_error(cli(capsys, "translate", str(bare), "--regs", str(both), "--cpu", "2", "0x1000"))
    legacy = tmp_path / "legacy.txt"
    legacy.write_text("EAX=00000000 EBX=00000000 ECX=00000000 EDX=00000000\nEIP=0010000c EFL=00000002\n"
                      "CR0=00000011 CR2=00000000 CR3=00000000 CR4=00000000\n")
    r = cli(capsys, "translate", str(bare), "--regs", str(legacy), "--json", "0x123456")
    assert json.loads(r.out)[0]["pa"] == "0x123456"  # paging off: the address itself


@pytest.mark.parametrize("text, needle", [
    ("hello\n", "no RIP"), ("RIP=1 CR0=11 CR3=0 CR4=0 CR2=0 EFER=" + "f" * 20 + "\n", "64 bits"),
])
def test_bad_regs_files(text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "regs.txt"
    f.write_text(text)
    for cmd in ("translate", "ptdump"):
        extra = ["0x1000"] if cmd == "translate" else []
        r = cli(capsys, cmd, str(NOKASLR / "core.elf.gz"), "--regs", str(f), *extra)
        one_line_error(r)
        assert needle in r.err, r.err
    one_line_error(cli(capsys, "ptdump", str(NOKASLR / "core.elf.gz"), "--regs", str(tmp_path)))


def printed_e820(console: str, label: str) -> list[Region]:
    out = []
    for line in console.splitlines():
        m = E820_RE.search(line)
        if m and m[1] == label:
            out.append(Region(int(m[2], 16), int(m[3], 16) + 1, TYPES.get(m[4].strip(), RegionType.RESERVED)))
    return out


def zero_page_e820(boot_params: bytes) -> list[Region]:
    """struct boot_params: e820_entries (u8) at 0x1e8, e820_table at 0x2d0, 20-byte {u64 addr, size; u32 type}."""
    n = boot_params[0x1E8]
    out = []
    for i in range(n):
        addr, size, kind = struct.unpack_from("<QQI", boot_params, 0x2D0 + 20 * i)
        out.append(Region(addr, addr + size, ZERO_PAGE_TYPES.get(kind, RegionType.RESERVED)))
    return out


def test_dmesg_is_the_firmware_map_the_loader_gave(tmp_path: Path) -> None:
    fx = FIXTURES / "midboot-qemu64-2g"
    zero = zero_page_e820(gzip.decompress((fx / "x86_64_start_kernel.boot_params.bin.gz").read_bytes()))
    assert read_e820(str(fx / "console.log")) == sorted(zero, key=lambda r: r.start)


def test_dmesg_with_a_user_map_gives_the_firmware_map_and_says_so(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """memmap= made a user: map; --e820 is the machine's map (the model applies memmap= from --cmdline)."""
    fx = FIXTURES / "midboot-qemu64-2g-memmap"
    console = (fx / "console.log").read_text()
    firmware = printed_e820(console, "BIOS-e820")
    assert firmware and printed_e820(console, "user") not in ([], firmware)
    assert read_e820(str(fx / "console.log")) == firmware
    assert "user: map" in capsys.readouterr().err
    journal = tmp_path / "journal.txt"  # journalctl -k: no timestamps in brackets, a host prefix
    journal.write_text("".join(f"Nov 28 10:00:00 host kernel: {ln.split('] ', 1)[1]}\n"
                               for ln in console.splitlines() if "] " in ln))
    assert read_e820(str(journal)) == firmware


@pytest.mark.parametrize("fixture", [NOKASLR, KASLR], ids=["nokaslr", "kaslr"])
def test_sys_firmware_memmap_grep_and_directory(fixture: Path, tmp_path: Path) -> None:
    """The guest's /sys/firmware/memmap (as 'grep -r .' printed it, and rebuilt as a directory) is the
    firmware map the same guest printed as BIOS-e820."""
    want = printed_e820((fixture / "console.log").read_text(), "BIOS-e820")
    assert read_e820(str(fixture / "memmap.txt")) == want
    root = tmp_path / "memmap"
    for line in (fixture / "memmap.txt").read_text().splitlines():
        path, _, value = line.partition(":")
        entry, field = path.split("/")[-2:]
        (root / entry).mkdir(parents=True, exist_ok=True)
        (root / entry / field).write_text(value + "\n")
    assert read_e820(str(root)) == want


def test_old_dmesg_format_has_exclusive_ends(tmp_path: Path) -> None:
    f = tmp_path / "dmesg-2.6"
    f.write_text("BIOS-provided physical RAM map:\n BIOS-e820: 0000000000000000 - 000000000009fc00 (usable)\n"
                 " BIOS-e820: 0000000000100000 - 0000000020000000 (usable)\n"
                 " BIOS-e820: 00000000fffc0000 - 0000000100000000 (reserved)\n")
    assert read_e820(str(f)) == [Region(0, 0x9FC00, RegionType.RAM), Region(0x100000, 0x2000_0000, RegionType.RAM),
                                 Region(0xFFFC_0000, 1 << 32, RegionType.RESERVED)]


def test_boot_from_a_console_log(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli(capsys, "boot", "--e820", str(NOKASLR / "console.log"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outcome"] == "booted"


@pytest.mark.parametrize("content, needle", [
    ("/sys/firmware/memmap/0/start:0x0\n/sys/firmware/memmap/0/end:0xfff\n", "has no type"),
    ("/sys/firmware/memmap/0/start:zz\n/sys/firmware/memmap/0/end:0xfff\n/sys/firmware/memmap/0/type:System RAM\n",
     "not hex"),
    ("[0.0] BIOS-e820: [mem 0x0000000000100000-0x00000000000fffff] usable\n", "not above"),
    ("[0.0] BIOS-e820: [mem 0x0000000000000000-0x00000000000fffff] usable\n"
     "[0.0] BIOS-e820: [mem 0x0000000000080000-0x00000000001fffff] reserved\n", "overlaps"),
])
def test_bad_e820_inputs(content: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "e820"
    f.write_text(content)
    r = cli(capsys, "boot", "--e820", str(f))
    one_line_error(r)
    assert needle in r.err, r.err
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="without numbered entries"):
        read_e820(str(tmp_path / "empty"))


@pytest.mark.parametrize("name", ["midboot-qemu64-2g-memmap", "midboot-max-4g-memmap", "midboot-qemu64-4g-mem1500m"])
def test_a_kernel_log_and_its_command_line_reproduce_the_kernels_maps(name: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The guest's own log as --e820 and its command line as --cmdline: the model prints the firmware map and
    the user: map (mem=/memmap=) exactly as the real kernel printed them."""
    console = (FIXTURES / name / "console.log").read_text()
    cmdline = next(ln.split("Command line: ", 1)[1] for ln in console.splitlines() if "Command line: " in ln)
    r = cli(capsys, "boot", "--profile", "current", "--e820", str(FIXTURES / name / "console.log"), "--cmdline",
            cmdline.strip(), "--json")
    model = [ln for ln in json.loads(r.out)["console"] if ln.startswith(("BIOS-e820:", "user:"))]
    guest = [m[0] for ln in console.splitlines() if (m := re.search(r"(BIOS-e820|user): \[mem .*$", ln))]
    assert model == guest
