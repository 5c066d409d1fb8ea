"""The guest bugs ``earlymm boot --pv xen --xen-guest-bug`` can build in (kept apart from the guest's code
so that the command line can list them without loading the Xen model)."""

from __future__ import annotations

GUEST_BUGS = {
    "writable-pagetable": "xen_setup_kernel_pagetable leaves level2_kernel_pgt writable (set_page_prot with "
                          "PAGE_KERNEL instead of PAGE_KERNEL_RO): Xen refuses the pin",
    "native-cpuid": "the kernel executes a raw CPUID, not xen_cpuid: it sees PSE and asks Xen for 2 MiB pages",
}
