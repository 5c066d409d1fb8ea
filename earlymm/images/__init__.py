"""images layer: physical memory images (QEMU cores, raw dumps) behind the ``FrameSource`` interface."""

from typing import TYPE_CHECKING, Any

from earlymm.images.base import FileSegment, ImageError, SegmentImage
from earlymm.images.cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment
from earlymm.images.qemu_core import QemuCore, RawImage, open_image, open_qemu_core, open_raw_image
from earlymm.images.safe_write import WriteError

if TYPE_CHECKING:
    from earlymm.images.core_writer import write_qemu_core

Image = SegmentImage


def __getattr__(name: str) -> Any:
    # The writer brings tempfile and gzip along; only saving a core needs it, so it is loaded then.
    if name == "write_qemu_core":
        from earlymm.images.core_writer import write_qemu_core

        return write_qemu_core
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
