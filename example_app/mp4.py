"""A tiny MP4 writer, for the stand-in video of simulated tasks (samples.py).

Browsers play H.264 in MP4, and H.264 can carry a picture uncompressed: every macroblock
``I_PCM``, its 16x16 luma and two 8x8 chroma samples written as they are. No encoder, no
dependency, a few kilobytes of code; the price is size (384 bytes per macroblock and frame), which
does not matter for a couple of seconds of a small picture. Each frame is a keyframe (IDR), so
the file needs no sync-sample table and seeks anywhere.

The syntax followed is ITU-T H.264 (sequence and picture parameter sets, IDR slice, Baseline
profile, CAVLC) and ISO/IEC 14496-12 and -15 (the boxes, the ``avc1`` sample entry and ``avcC``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

#: Macroblock type ``I_PCM`` in an I slice.
_I_PCM = 25
#: Baseline profile, constrained (set 0 and 1), level 3.0: what every browser decodes.
_PROFILE, _CONSTRAINTS, _LEVEL = 66, 0xC0, 30
#: NAL unit headers (``nal_ref_idc`` 3): sequence and picture parameter sets, an IDR slice.
_SPS, _PPS, _IDR = 0x67, 0x68, 0x65
#: Every two zero bytes followed by a byte of 0 to 3 inside a NAL unit get a 3 between them.
_EMULATION = re.compile(b"\x00\x00(?=[\x00-\x03])")


@dataclass(frozen=True)
class Frame:
    """One picture in 4:2:0: ``y`` is width x height bytes, ``cb`` and ``cr`` a quarter each,
    row after row, in the video range (16-235 for luma, 16-240 for chroma)."""

    y: bytes
    cb: bytes
    cr: bytes


class _Bits:
    """A big-endian bit writer with the Exp-Golomb codes of H.264 (``ue(v)``, ``se(v)``)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.value = 0
        self.count = 0

    def u(self, width: int, value: int) -> None:
        self.value = (self.value << width) | value
        self.count += width
        while self.count >= 8:
            self.count -= 8
            self.out.append((self.value >> self.count) & 0xFF)
        self.value &= (1 << self.count) - 1

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align(self) -> None:
        if self.count:
            self.u(8 - self.count, 0)

    def raw(self, data: bytes) -> None:
        """Bytes at a byte boundary (call :meth:`align` first)."""
        self.out += data

    def trailing(self) -> bytes:
        """Ends the payload with its stop bit and returns it as a NAL unit's body."""
        self.u(1, 1)
        self.align()
        return bytes(self.out)


def _nal(header: int, payload: bytes) -> bytes:
    return bytes([header]) + _EMULATION.sub(b"\x00\x00\x03", payload)


def _sequence(width: int, height: int) -> bytes:
    bits = _Bits()
    bits.u(8, _PROFILE)
    bits.u(8, _CONSTRAINTS)
    bits.u(8, _LEVEL)
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(0)  # log2_max_frame_num_minus4: frame_num is 4 bits, always 0 in IDR pictures
    bits.ue(2)  # pic_order_cnt_type 2: order from frame_num, nothing in slice headers
    bits.ue(1)  # max_num_ref_frames
    bits.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    bits.ue(width // 16 - 1)
    bits.ue(height // 16 - 1)
    bits.u(1, 1)  # frame_mbs_only_flag
    bits.u(1, 1)  # direct_8x8_inference_flag
    bits.u(1, 0)  # frame_cropping_flag
    bits.u(1, 0)  # vui_parameters_present_flag
    return _nal(_SPS, bits.trailing())


def _picture() -> bytes:
    bits = _Bits()
    bits.ue(0)  # pic_parameter_set_id
    bits.ue(0)  # seq_parameter_set_id
    bits.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    bits.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    bits.ue(0)  # num_slice_groups_minus1
    bits.ue(0)  # num_ref_idx_l0_default_active_minus1
    bits.ue(0)  # num_ref_idx_l1_default_active_minus1
    bits.u(1, 0)  # weighted_pred_flag
    bits.u(2, 0)  # weighted_bipred_idc
    bits.se(0)  # pic_init_qp_minus26
    bits.se(0)  # pic_init_qs_minus26
    bits.se(0)  # chroma_qp_index_offset
    bits.u(1, 0)  # deblocking_filter_control_present_flag
    bits.u(1, 0)  # constrained_intra_pred_flag
    bits.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(_PPS, bits.trailing())


def _slice(frame: Frame, index: int, width: int, height: int) -> bytes:
    bits = _Bits()
    bits.ue(0)  # first_mb_in_slice
    bits.ue(7)  # slice_type: I, as every slice of the picture
    bits.ue(0)  # pic_parameter_set_id
    bits.u(4, 0)  # frame_num
    bits.ue(index % 2)  # idr_pic_id: two IDR pictures in a row must differ
    bits.u(1, 0)  # no_output_of_prior_pics_flag
    bits.u(1, 0)  # long_term_reference_flag
    bits.se(0)  # slice_qp_delta
    half = width // 2
    for top in range(0, height, 16):
        for left in range(0, width, 16):
            bits.ue(_I_PCM)
            bits.align()
            for row in range(top, top + 16):
                bits.raw(frame.y[row * width + left : row * width + left + 16])
            for plane in (frame.cb, frame.cr):
                for row in range(top // 2, top // 2 + 8):
                    bits.raw(plane[row * half + left // 2 : row * half + left // 2 + 8])
    return _nal(_IDR, bits.trailing())


def _box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, flags: int, *parts: bytes) -> bytes:
    """A box with a version (always 0 here) and flags."""
    return _box(kind, struct.pack(">I", flags), *parts)


_UNITY = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def encode(frames: Sequence[Frame], width: int, height: int, fps: int) -> bytes:
    """An MP4 file showing ``frames`` at ``fps``; ``width`` and ``height`` multiples of 16."""
    if width % 16 or height % 16 or not frames:
        raise ValueError("frames of a size in whole macroblocks (16 pixels), at least one")
    sps, pps = _sequence(width, height), _picture()
    samples = [
        struct.pack(">I", len(nal)) + nal
        for nal in (_slice(frame, index, width, height) for index, frame in enumerate(frames))
    ]
    count, millis = len(samples), len(samples) * 1000 // fps
    avcc = _box(
        b"avcC",
        bytes([1, _PROFILE, _CONSTRAINTS, _LEVEL, 0xFF, 0xE1]),  # 4-byte lengths, one SPS
        struct.pack(">H", len(sps)),
        sps,
        bytes([1]),
        struct.pack(">H", len(pps)),
        pps,
    )
    entry = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HHII", width, height, 0x480000, 0x480000),  # 72 dpi
        bytes(4),
        struct.pack(">H", 1),  # frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x18, -1),
        avcc,
    )

    def movie(offset: int) -> bytes:
        table = _box(
            b"stbl",
            _full_box(b"stsd", 0, struct.pack(">I", 1), entry),
            _full_box(b"stts", 0, struct.pack(">III", 1, count, 1)),
            _full_box(b"stsc", 0, struct.pack(">IIII", 1, 1, count, 1)),
            _full_box(
                b"stsz",
                0,
                struct.pack(">II", 0, count),
                *(struct.pack(">I", len(sample)) for sample in samples),
            ),
            _full_box(b"stco", 0, struct.pack(">II", 1, offset)),
        )
        media = _box(
            b"mdia",
            _full_box(b"mdhd", 0, struct.pack(">IIIIHH", 0, 0, fps, count, 0x55C4, 0)),  # und
            _full_box(b"hdlr", 0, bytes(4), b"vide", bytes(12), b"Sample video\x00"),
            _box(
                b"minf",
                _full_box(b"vmhd", 1, bytes(8)),
                _box(b"dinf", _full_box(b"dref", 0, struct.pack(">I", 1), _full_box(b"url ", 1))),
                table,
            ),
        )
        track = _full_box(
            b"tkhd",
            3,  # enabled, in the movie
            struct.pack(">5I", 0, 0, 1, 0, millis),
            bytes(16),
            _UNITY,
            struct.pack(">II", width << 16, height << 16),
        )
        header = _full_box(
            b"mvhd",
            0,
            struct.pack(">5IH", 0, 0, 1000, millis, 0x10000, 0x100),
            bytes(10),
            _UNITY,
            bytes(24),
            struct.pack(">I", 2),  # next_track_ID
        )
        return _box(b"moov", header, _box(b"trak", track, media))

    kinds = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    # The movie box comes first, so that a browser can start playing before the end arrives;
    # its size does not depend on the offset it holds.
    offset = len(kinds) + len(movie(0)) + 8
    return kinds + movie(offset) + _box(b"mdat", *samples)
