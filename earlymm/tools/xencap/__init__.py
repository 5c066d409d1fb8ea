"""A Linux kernel as Xen 4.17's PV dom0, stopped mid-boot, as fixtures (issue 12, item 3)."""
