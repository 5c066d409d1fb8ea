"""Paravirt hooks (``pv_ops``): the seam between the kernel model and the platform it runs on."""
