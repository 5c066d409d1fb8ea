"""``struct start_info``: what Xen's domain builder hands a PV guest in RSI.

Layout for a 64-bit guest, xen/include/public/xen.h (Xen 4.17; Linux carries the same struct in
include/xen/interface/xen.h): ``char magic[32]``, then unsigned longs ``nr_pages`` (32), ``shared_info``
(40, a machine address), ``uint32_t flags`` (48), ``xen_pfn_t store_mfn`` (56), ``uint32_t store_evtchn``
(64), the console union at 72 (dom0: ``uint32_t info_off, info_size``; domU: ``xen_pfn_t mfn, uint32_t
evtchn``), ``pt_base`` (88, VA of the bootstrap L4), ``nr_pt_frames`` (96), ``mfn_list`` (104, VA of the
p2m list), ``mod_start`` (112: a VA, or a pfn when ``SIF_MOD_START_PFN``), ``mod_len`` (120),
``int8_t cmd_line[1024]`` (128), ``first_p2m_pfn`` (1152), ``nr_p2m_frames`` (1160); 1168 bytes. The
builder puts a ``dom0_vga_console_info`` right after it (``info_off`` = 1168), so Xen's ``Start info:``
line spans more than the struct.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from enum import IntFlag
from typing import Any

SIZE = 1168


class Sif(IntFlag):
    PRIVILEGED = 1 << 0
    INITDOMAIN = 1 << 1
    MULTIBOOT_MOD = 1 << 2
    MOD_START_PFN = 1 << 3
    VIRT_P2M_4TOOLS = 1 << 4


SIF_PM_MASK = 0xFF << 8


@dataclass(frozen=True, slots=True)
class StartInfo:
    magic: str
    nr_pages: int
    shared_info: int
    flags: int
    store_mfn: int
    store_evtchn: int
    console_info_off: int
    console_info_size: int
    pt_base: int
    nr_pt_frames: int
    mfn_list: int
    mod_start: int
    mod_len: int
    cmd_line: str
    first_p2m_pfn: int
    nr_p2m_frames: int

    @property
    def flag_names(self) -> list[str]:
        return [f.name for f in Sif if self.flags & f and f.name]

    def to_json(self) -> dict[str, Any]:
        """Numbers as hex strings (addresses), counts as ints; the flags also by name."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = v if isinstance(v, str) or k in ("nr_pages", "nr_pt_frames", "nr_p2m_frames",
                                                      "store_evtchn", "console_info_off",
                                                      "console_info_size", "mod_len") else f"{v:#x}"
        out["flag_names"] = self.flag_names
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartInfo:
        def num(k: str) -> int:
            v = data[k]
            return int(v, 16) if isinstance(v, str) else int(v)

        return cls(str(data["magic"]), num("nr_pages"), num("shared_info"), num("flags"), num("store_mfn"),
                   num("store_evtchn"), num("console_info_off"), num("console_info_size"), num("pt_base"),
                   num("nr_pt_frames"), num("mfn_list"), num("mod_start"), num("mod_len"), str(data["cmd_line"]),
                   num("first_p2m_pfn"), num("nr_p2m_frames"))


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def decode_start_info(raw: bytes) -> StartInfo:
    if len(raw) < SIZE:
        raise ValueError(f"start_info is {len(raw)} bytes, not {SIZE}")
    nr_pages, shared_info, flags = struct.unpack_from("<QQI", raw, 32)
    store_mfn, store_evtchn = struct.unpack_from("<QI", raw, 56)
    info_off, info_size = struct.unpack_from("<II", raw, 72)
    pt_base, nr_pt, mfn_list, mod_start, mod_len = struct.unpack_from("<5Q", raw, 88)
    first_p2m, nr_p2m = struct.unpack_from("<QQ", raw, 1152)
    return StartInfo(_cstr(raw[:32]), nr_pages, shared_info, flags, store_mfn, store_evtchn, info_off, info_size,
                     pt_base, nr_pt, mfn_list, mod_start, mod_len, _cstr(raw[128:1152]), first_p2m, nr_p2m)
