"""Golden outputs that guard the kernel-model refactoring of issue 8 (seams: pgtable geometry, pv_ops,
platform). They were recorded from the model itself BEFORE the refactoring, so they prove only that the
refactoring changed nothing — not that the model is right (other tests check that against the spec, Unicorn
and real kernels). Regenerate only for a deliberate behaviour change, and say so in the commit:

    python -m tests.golden.boot_golden --update
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "boot"

E820_HOLES = """\
0x0 0x9fc00 ram
0x9fc00 0xa0000 reserved
0xf0000 0x100000 reserved
0x100000 0x10000000 ram
0x10000000 0x10400000 reserved
0x10400000 0x7ff00000 ram
0x7ff00000 0x80000000 acpi
0xfffc0000 0x100000000 reserved
0x100000000 0x140000000 ram
0x141000000 0x180000000 ram
"""

# name -> earlymm boot arguments (without --json/--trace/--save-core)
CONFIGS: dict[str, list[str]] = {
    "v39-default": [],
    "cur-default": ["--profile", "current"],
    "v39-64T": ["--mem", "64T"],
    "cur-64T": ["--profile", "current", "--mem", "64T"],
    "v39-above4g": ["--mem", "8G", "--kernel-at", "0x140000000"],
    "cur-above4g": ["--profile", "current", "--mem", "8G", "--kernel-at", "0x140000000"],
    "v39-1g-2m": ["--kernel-at", "0x3fe00000"],
    "cur-1g-2m": ["--profile", "current", "--kernel-at", "0x3fe00000"],
    "v39-e820-holes": ["--e820", "{E820_HOLES}"],
    "cur-e820-holes": ["--profile", "current", "--e820", "{E820_HOLES}"],
    "v39-pool2": ["--pool", "2"],
    "cur-pool2": ["--profile", "current", "--pool", "2"],
    "v39-rfc": ["--variant", "rfc"],
    "v39-rfc-relocated": ["--variant", "rfc", "--kernel-at", "0x3000000"],
    "v39-page-offset": ["--pool-access", "page-offset"],
    "cur-page-offset": ["--profile", "current", "--pool-access", "page-offset"],
    "v39-no-nx": ["--no-nx", "--no-gbpages"],
    "v39-until-startup": ["--until", "startup_64"],
    # recorded before the direct-map builders read and wrote table pages in runs (kernel/table_run.py)
    "v39-nogb-holes-pool3": ["--no-gbpages", "--e820", "{E820_HOLES}", "--pool", "3"],
    "cur-nogb-8G-pool2": ["--profile", "current", "--no-gbpages", "--mem", "8G", "--pool", "2"],
    "cur-nogb-above4g": ["--profile", "current", "--no-gbpages", "--mem", "8G",
                         "--kernel-at", "0x140000000"],
    # recorded when the decompressor stage and 5-level paging arrived (issue 10)
    "cur-l5-merged": ["--paging", "5", "--mem", "8G"],
    "cur-l5-rfc-above4g": ["--paging", "5", "--decompressor", "rfc", "--mem", "8G", "--kernel-at", "0x140000000"],
    "cur-l5-v414-above4g": ["--paging", "5", "--decompressor", "v4.14", "--mem", "8G", "--kernel-at", "0x140000000"],
    "cur-l5-no5lvl": ["--paging", "5", "--loader-paging", "5", "--cmdline", "root=/dev/sda1 no5lvl"],
    "cur-l5-80T-pool3": ["--paging", "5", "--mem", "80T", "--pool", "3"],
    # recorded when the Xen PV path arrived (issue 11)
    "xen-v39-256M": ["--pv", "xen", "--mem", "256M"],
    "xen-v39-late": ["--pv", "xen", "--mem", "256M", "--xen-write-cr3", "late"],
    "xen-v39-writable-pagetable": ["--pv", "xen", "--mem", "128M", "--xen-guest-bug", "writable-pagetable"],
    # recorded when the 2.6.21 i386 boot arrived (issue 13, native backend)
    "i386-default": ["--arch", "i386"],
    "i386-pae": ["--arch", "i386", "--pae"],
    "i386-1g-nopse": ["--arch", "i386", "--mem", "1G", "--no-pse"],
    "i386-pae-1g-nopse-nonx": ["--arch", "i386", "--pae", "--mem", "1G", "--no-pse", "--no-nx"],
    "i386-pae-clobber": ["--arch", "i386", "--pae", "--image-size", "27M", "--until", "pagetable_setup_start"],
    "i386-e820-holes": ["--arch", "i386", "--e820", "{E820_HOLES}"],
    # recorded when the i386 Xen PV path arrived (issue 13, Xen backend: 2.6.23's hooks on Xen 3.1)
    "i386-xen-128M": ["--arch", "i386", "--pv", "xen", "--mem", "128M"],
    "i386-pae-xen-96M": ["--arch", "i386", "--pae", "--pv", "xen", "--mem", "96M", "--xen-seed", "7"],
}


def core_digest(path: Path) -> dict[str, Any]:
    """Writer-independent content of a saved core: a hash per non-zero page, and the CPU note."""
    from earlymm.images import open_image

    with open_image(path) as img:
        pages: dict[str, str] = {}
        for start, end in img.ranges():
            for pfn in range(start >> 12, (end + 4095) >> 12):
                frame = img.frame(pfn)
                if frame is not None and any(bytes(frame)):
                    pages[f"{pfn:#x}"] = hashlib.sha256(bytes(frame)).hexdigest()[:16]
        cpus = [{k: getattr(c, k) for k in ("cr0", "cr2", "cr3", "cr4", "rip", "rflags")}
                for c in img.cpus]
    return {"pages": pages, "cpus": cpus}


def run(name: str, tmp: Path) -> dict[str, Any]:
    from earlymm.cli.main import main

    e820 = tmp / "e820.txt"
    e820.write_text(E820_HOLES)
    core = tmp / f"{name}.core"
    argv = ["boot", *(a.replace("{E820_HOLES}", str(e820)) for a in CONFIGS[name]), "--json", "--trace",
            "--save-core", str(core)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    doc = json.loads(out.getvalue())
    return {"argv": CONFIGS[name], "exit": code, "json": doc, "core": core_digest(core)}


def path_of(name: str) -> Path:
    return HERE / f"{name}.json.gz"


def load(name: str) -> dict[str, Any]:
    with gzip.open(path_of(name), "rt", encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--update", action="store_true", help="rewrite the golden files")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args(argv)
    if not args.update:
        ap.error("pass --update to rewrite golden files")
    HERE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for name in args.names or CONFIGS:
            doc = run(name, Path(d))
            with gzip.GzipFile(path_of(name), "wb", mtime=0) as f:
                f.write(json.dumps(doc, indent=0, sort_keys=True).encode())
            print(name, doc["exit"], doc["json"]["outcome"], path_of(name).stat().st_size, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
