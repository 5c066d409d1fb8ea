"""``earlymm ptdump``: every present leaf of an address space, in QEMU's, Linux's or a JSON format, and
audits over it (W+X, user/kernel isolation).

``engine`` reads the table DAG and lists leaves (bounded on aliasing and hostile tables), ``semantics``
says how QEMU, Linux and the CPU each read an entry, the format modules render, ``audit`` checks.
"""
