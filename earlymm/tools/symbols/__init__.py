"""Kernel symbols for the inspection tools: read a kallsyms / System.map / vmlinux file (``load``), place
it in an image (the KASLR slide, ``kaslr``), label addresses ``name+0xoff`` and resolve names (``Symbolizer``)."""
