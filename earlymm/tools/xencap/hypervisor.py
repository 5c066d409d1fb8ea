"""Debian's Xen 4.17 hypervisor, fetched with ``apt-get download`` and unpacked into a cache directory.

The package ``xen-hypervisor-4.17-amd64`` ships ``boot/xen-4.17-amd64.gz``: a gzipped 32-bit ELF with a
multiboot header, which QEMU's ``-kernel`` loads as a multiboot kernel once decompressed (QEMU's
multiboot loader refuses compressed images). Nothing here is committed: the cache lives under
``captures/`` (gitignored), next to the Debian kernel the mid-boot capture fetches.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

PACKAGE = "xen-hypervisor-4.17-amd64"
IMAGE = "xen-4.17-amd64"  # the decompressed multiboot ELF, beside the .deb
DEFAULT_DIR = Path("captures/xen")


class XenFetchError(Exception):
    pass


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise XenFetchError(f"{cmd[0]}: {e}") from None
    if r.returncode != 0:
        raise XenFetchError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def find_deb(dest: Path) -> Path | None:
    debs = sorted(dest.glob(f"{PACKAGE}_*.deb"))
    return debs[-1] if debs else None


def package_version(dest: Path) -> str:
    """The Debian version from the cached .deb's name (``4.17.7+13-g2445b30a44-0+deb12u1``)."""
    deb = find_deb(dest)
    if deb is None:
        return ""
    return deb.stem.split("_")[1].replace("%3a", ":")


def fetch_xen(dest: Path = DEFAULT_DIR) -> Path:
    """The decompressed hypervisor under ``dest``, downloading and unpacking the package if needed."""
    image = dest / IMAGE
    if image.is_file():
        return image
    dest.mkdir(parents=True, exist_ok=True)
    if find_deb(dest) is None:
        if shutil.which("apt-get") is None:
            raise XenFetchError(f"no {PACKAGE} .deb under {dest} and no apt-get to download one")
        _run(["apt-get", "download", PACKAGE], cwd=dest)
    deb = find_deb(dest)
    if deb is None:
        raise XenFetchError(f"apt-get download {PACKAGE} left no .deb in {dest}")
    _run(["dpkg", "-x", str(deb), str(dest / "root")])
    gz = dest / "root" / "boot" / f"{IMAGE}.gz"
    if not gz.is_file():
        raise XenFetchError(f"{deb.name} has no boot/{gz.name}")
    tmp = image.with_suffix(".tmp")
    try:
        tmp.write_bytes(gzip.decompress(gz.read_bytes()))
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        tmp.unlink(missing_ok=True)
        raise XenFetchError(f"{gz}: {e}") from None
    tmp.replace(image)
    return image
