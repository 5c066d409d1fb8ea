"""images layer: physical memory images (QEMU cores, raw dumps) behind the ``FrameSource`` interface."""

from earlymm.images.base import FileSegment, ImageError, SegmentImage
from earlymm.images.core_writer import write_qemu_core
from earlymm.images.cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment
from earlymm.images.qemu_core import QemuCore, RawImage, open_image, open_qemu_core, open_raw_image
from earlymm.images.safe_write import WriteError

Image = SegmentImage

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
