"""The Linux 2.6.21 i386 boot path: head.S, setup_arch's memory set-up and paging_init with the paravirt hooks."""
