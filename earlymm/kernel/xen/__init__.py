"""The Linux Xen PV guest (arch/x86/xen/*.c): the guest side of the hypervisor seam, in Linux's names."""
