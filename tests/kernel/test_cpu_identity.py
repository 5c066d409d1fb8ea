"""CPU identity as machine input (issue 8): each identity option changes what the kernel model does
exactly where Linux's code branches on it. Expected outcomes are read off the sources:

* v3.9 ``load_ucode_bsp`` (arch/x86/kernel/microcode_core_early.c): ``if (vendor == X86_VENDOR_INTEL &&
  x86 >= 6) load_ucode_intel_bsp();`` — nothing else.
* 6.1 ``load_ucode_bsp`` (arch/x86/kernel/cpu/microcode/core.c): Intel needs family >= 6, AMD family >= 0x10,
  other vendors return; ``check_loader_disabled_bsp`` keeps the loader off when CPUID.1:ECX[31] (the
  hypervisor bit) is set, or when ``dis_ucode_ldr`` is on the command line.

A loader that runs reads the initrd through the direct map, which costs early page faults; one that does
not, does not read it at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from earlymm.arch.cpuid import CpuIdentity, Vendor, cpuid_leaf
from earlymm.arch.modes import Features
from earlymm.hw.events import FaultRaised
from earlymm.kernel.events import Note
from earlymm.kernel.phases import Phase
from tests.kernel.conftest import make_boot

INTEL6 = CpuIdentity(Vendor.INTEL, 6, 0x3A, 9)
INTEL5 = CpuIdentity(Vendor.INTEL, 5, 2, 1)
AMD17 = CpuIdentity(Vendor.AMD, 0x17, 1, 2)
AMD10 = CpuIdentity(Vendor.AMD, 0x10, 2, 2)
AMD0F = CpuIdentity(Vendor.AMD, 0xF, 0x6B, 2)


def _ucode(profile: str, identity: CpuIdentity, **kw: Any) -> tuple[str, int]:
    r = make_boot(profile=profile, identity=identity, until=Phase.X86_64_START_KERNEL, **kw)
    notes = [e.what for e in r.ctx.trace.events if isinstance(e, Note) and e.what.startswith("early microcode")]
    assert len(notes) == 1, notes
    initrd = r.ctx.platform.entry.ramdisk_at + r.ctx.profile.page_offset
    faults = sum(1 for e in r.ctx.trace.events if isinstance(e, FaultRaised) and e.cr2 >> 21 == initrd >> 21)
    return notes[0], faults


@pytest.mark.parametrize(("profile", "identity", "loads"), [
    ("v3.9", INTEL6, True), ("v3.9", INTEL5, False), ("v3.9", AMD17, False), ("v3.9", AMD10, False),
    ("current", INTEL6, True), ("current", INTEL5, False), ("current", AMD17, True), ("current", AMD10, True),
    ("current", AMD0F, False),
])
def test_microcode_loader_runs_where_the_source_says(profile: str, identity: CpuIdentity, loads: bool) -> None:
    note, faults = _ucode(profile, identity)
    if loads:
        assert "1 update(s) found" in note
        assert faults == 1  # the initrd's first 2 MiB materialised by the early #PF handler
    else:
        assert "not loaded" in note
        assert faults == 0


@pytest.mark.parametrize("identity", [INTEL6, AMD17])
def test_hypervisor_bit_disables_the_61_loader_but_not_v39(identity: CpuIdentity) -> None:
    hv = CpuIdentity(identity.vendor, identity.family, identity.model, identity.stepping, hypervisor=True)
    note, faults = _ucode("current", hv)
    assert "hypervisor" in note and faults == 0
    if identity.vendor is Vendor.INTEL:  # v3.9 has no such check: it loads under a hypervisor too
        note, faults = _ucode("v3.9", hv)
        assert "1 update(s) found" in note and faults == 1


def test_dis_ucode_ldr_on_the_command_line() -> None:
    note, faults = _ucode("current", INTEL6, cmdline="root=/dev/sda1 dis_ucode_ldr quiet")
    assert "dis_ucode_ldr" in note and faults == 0
    note, _ = _ucode("current", INTEL6, cmdline="root=/dev/sda1 dis_ucode_ldr=1")  # not the bare word
    assert "1 update(s) found" in note
    note, _ = _ucode("v3.9", INTEL6, cmdline="dis_ucode_ldr")  # v3.9 knows no such option
    assert "1 update(s) found" in note


def test_cpuid_leaves_encode_the_identity_as_the_sdm_says() -> None:
    """SDM Vol. 2A CPUID: leaf 0 vendor string in EBX, EDX, ECX; leaf 1 EAX signature with the extended
    family for family 0xF and the extended model; ECX[31] the hypervisor bit."""
    f = Features()
    _, ebx, ecx, edx = cpuid_leaf(AMD17, f, 0)
    assert b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)) == b"AuthenticAMD"
    assert cpuid_leaf(AMD17, f, 1)[0] == 0x0080_0F12  # family 0x17 = 0xF + 8, model 1, stepping 2
    assert cpuid_leaf(INTEL6, f, 1)[0] == 0x0003_06A9  # Ivy Bridge: the microcode header's signature
    assert not cpuid_leaf(INTEL6, f, 1)[2] >> 31
    assert cpuid_leaf(CpuIdentity(hypervisor=True), f, 1)[2] >> 31 == 1
    assert cpuid_leaf(INTEL6, Features(nx=False), 0x8000_0001)[3] >> 20 & 1 == 0
    assert cpuid_leaf(INTEL6, Features(gbpages=True), 0x8000_0001)[3] >> 26 & 1 == 1


def test_cli_identity_options(capsys: pytest.CaptureFixture[str]) -> None:
    from earlymm.cli.main import main

    assert main(["boot", "--profile", "current", "--cpu-vendor", "amd", "--cpu-family", "0x10",
                 "--until", "x86_64_start_kernel"]) == 0
    assert "early microcode: 1 update(s)" in capsys.readouterr().out
    assert main(["boot", "--profile", "current", "--hypervisor", "--until", "x86_64_start_kernel"]) == 0
    assert "running under a hypervisor" in capsys.readouterr().out
    assert main(["boot", "--cpu-family", "0x200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "family" in err


def _direct_map_leaf(r: Any) -> int:
    ctx = r.ctx
    res = ctx.cpu.mmu.probe(ctx.va(0x4000_0000))
    assert res.ok
    return int(res.path[-1])


@pytest.mark.parametrize(("profile", "identity", "cmdline", "global_"), [
    ("current", INTEL6, "root=/dev/sda1", False),  # auto: Intel has the Meltdown bug → PTI
    ("current", INTEL6, "root=/dev/sda1 nopti", True),
    ("current", INTEL6, "root=/dev/sda1 pti=off", True),
    ("current", AMD17, "root=/dev/sda1", True),  # AMD is NO_MELTDOWN
    ("current", AMD17, "root=/dev/sda1 pti=on", False),
    ("v3.9", INTEL6, "root=/dev/sda1", True),  # no PTI in 2013
])
def test_pti_keeps_global_out_of_the_direct_map(profile: str, identity: CpuIdentity, cmdline: str,
                                                global_: bool) -> None:
    """6.1 probe_page_size_mask: "Except when with PTI where the kernel is mostly non-Global" —
    __default_kernel_pte_mask loses _PAGE_GLOBAL, and PAGE_KERNEL with it (arch/x86/mm/init.c); the
    midboot-qemu64-1g-pti fixture shows the real kernel's direct map without G under pti=on."""
    r = make_boot(profile=profile, identity=identity, cmdline=cmdline, until=Phase.INIT_MEM_MAPPING)
    assert bool(_direct_map_leaf(r) & 0x100) is global_
