"""earlymm: an executable model of x86 paging and Linux's early-boot page tables."""

__version__ = "0.1.0"
