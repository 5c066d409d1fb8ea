"""images layer: physical memory images (QEMU cores, raw dumps) behind the ``FrameSource`` interface.

The names below are loaded from their modules on first use (PEP 562): a command that needs one small
module of this package (``safe_write`` for an output path, ``cpustate`` for registers) does not pay for
the others, and only saving a core loads the writer (tempfile, gzip).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earlymm.images.base import FileSegment, ImageError, SegmentImage
    from earlymm.images.base import SegmentImage as Image
    from earlymm.images.core_writer import write_qemu_core
    from earlymm.images.cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment
    from earlymm.images.qemu_core import QemuCore, RawImage, open_image, open_qemu_core, open_raw_image
    from earlymm.images.safe_write import WriteError

_HOMES = {
    "FileSegment": "base", "ImageError": "base", "SegmentImage": "base", "Image": "base",
    "GPR_NAMES": "cpustate", "SEGMENT_NAMES": "cpustate", "CpuState": "cpustate", "Segment": "cpustate",
    "QemuCore": "qemu_core", "RawImage": "qemu_core", "open_image": "qemu_core", "open_qemu_core": "qemu_core",
    "open_raw_image": "qemu_core", "WriteError": "safe_write", "write_qemu_core": "core_writer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), "SegmentImage" if name == "Image" else name)
    globals()[name] = value
    return value


__all__ = [
    "GPR_NAMES",
    "SEGMENT_NAMES",
    "CpuState",
    "FileSegment",
    "Image",
    "ImageError",
    "QemuCore",
    "RawImage",
    "Segment",
    "SegmentImage",
    "WriteError",
    "open_image",
    "open_qemu_core",
    "open_raw_image",
    "write_qemu_core",
]
