"""A simulated Xen hypervisor under a 64-bit PV guest (spec §5; Xen 4.2 as in seed 004)."""
