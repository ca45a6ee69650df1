"""JPEG bitstream surgery for the tile fast path (pure functions on bytes, no I/O).

TIFF files store JPEG tiles as abbreviated streams whose quantisation and Huffman tables live in
the TIFF ``JPEGTables`` tag; Aperio additionally codes tiles in RGB (not YCbCr) without any
marker saying so, so a standalone decoder would apply a YCbCr->RGB transform and give wrong
colours. The helpers here parse marker segments, merge the tables into a tile and add an Adobe
APP14 marker that pins the colour transform, producing a standalone JPEG that any decoder
(PIL, imagecodecs) decodes to the same pixels as the TIFF reader.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
_SOS = 0xDA
_APP0 = 0xE0
_APP14 = 0xEE
_TABLE_MARKERS = frozenset({0xDB, 0xC4, 0xDD, 0xCC})  # DQT, DHT, DRI, DAC
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

# PhotometricInterpretation values (TIFF tag 262) of JPEG tiles the fast path reads.
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6


class JpegFormatError(ValueError):
    """The bytes are not a JPEG stream this module can parse."""


@dataclass(frozen=True)
class Segment:
    """One marker segment before the scan: ``marker`` (e.g. 0xDB) and its full bytes
    (``FF xx`` + length + payload)."""

    marker: int
    data: bytes


def split_header(stream: bytes) -> tuple[list[Segment], bytes]:
    """Split a JPEG stream into its header segments (between SOI and the first SOS, SOI
    excluded) and the rest (from the SOS marker to the end, EOI included).

    A tables-only stream (SOI, tables, EOI) returns its segments and ``b"\\xff\\xd9"``.
    Raises JpegFormatError on a malformed stream.
    """
    if not stream.startswith(SOI):
        raise JpegFormatError("JPEG stream does not start with SOI")
    segments: list[Segment] = []
    pos = 2
    n = len(stream)
    while pos < n:
        if stream[pos] != 0xFF:
            raise JpegFormatError(f"expected a marker at byte {pos}")
        marker = stream[pos + 1] if pos + 1 < n else -1
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9 or marker == _SOS:
            return segments, stream[pos:]
        if pos + 4 > n:
            raise JpegFormatError("JPEG stream truncated inside a marker")
        (length,) = struct.unpack(">H", stream[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            raise JpegFormatError(f"bad segment length {length} at byte {pos}")
        segments.append(Segment(marker, stream[pos:end]))
        pos = end
    raise JpegFormatError("JPEG stream has no SOS or EOI marker")


def has_jfif(segments: list[Segment]) -> bool:
    """True when an APP0 "JFIF" segment is present (libjpeg then assumes YCbCr)."""
    return any(s.marker == _APP0 and s.data[4:9] == b"JFIF\x00" for s in segments)


def adobe_transform(segments: list[Segment]) -> int | None:
    """The Adobe APP14 colour-transform flag (0 = none/RGB, 1 = YCbCr, 2 = YCCK), or None."""
    for s in segments:
        if s.marker == _APP14 and s.data[4:9] == b"Adobe" and len(s.data) >= 16:
            return s.data[15]
    return None


def component_ids(segments: list[Segment]) -> tuple[int, ...]:
    """Component identifiers from the SOF segment (empty if there is no SOF)."""
    for s in segments:
        if s.marker in _SOF_MARKERS and len(s.data) >= 10:
            ncomp = s.data[9]
            return tuple(s.data[10 + 3 * i] for i in range(ncomp) if 10 + 3 * i < len(s.data))
    return ()


def implied_colorspace(segments: list[Segment]) -> str:
    """The colour space a default libjpeg decoder assumes for a 3-component stream:
    "YCbCr" or "RGB" (JFIF wins, then the Adobe marker, then component ids 'R','G','B')."""
    if has_jfif(segments):
        return "YCbCr"
    transform = adobe_transform(segments)
    if transform is not None:
        return "RGB" if transform == 0 else "YCbCr"
    if component_ids(segments) == (0x52, 0x47, 0x42):
        return "RGB"
    return "YCbCr"


def adobe_segment(transform: int) -> bytes:
    """An Adobe APP14 segment (16 bytes) with the given colour-transform flag."""
    return b"\xff\xee\x00\x0eAdobe" + struct.pack(">HHHB", 100, 0, 0, transform)


def standalone_jpeg(tile: bytes, tables: bytes | None, colorspace: str | None) -> bytes | None:
    """A self-contained JPEG for one TIFF tile that decodes like the tile reader does, or None.

    ``tile`` is the tile's stream as stored, ``tables`` the TIFF JPEGTables value (or None) and
    ``colorspace`` the JPEG colour space the reader forces when decoding: "RGB" for RGB-coded
    tiles without JFIF (Aperio), None when the stream's own markers decide (YCbCr tiles). The
    tables are merged in after the tile's APPn segments; for a forced "RGB" an Adobe APP14
    marker (transform 0) is added so that a default decoder does not apply YCbCr->RGB. Returns
    None for non-3-component or malformed streams and when a JFIF/Adobe marker contradicts
    the forced colour space.
    """
    if colorspace not in (None, "RGB"):
        return None
    try:
        tile_segments, rest = split_header(tile)
        table_segments = list(_table_segments(tables)) if tables else []
    except JpegFormatError:
        return None
    if not rest.startswith(b"\xff\xda"):
        return None
    app = [s for s in tile_segments if 0xE0 <= s.marker <= 0xEF]
    other = [s for s in tile_segments if not 0xE0 <= s.marker <= 0xEF]
    merged_view = app + table_segments + other
    if len(component_ids(merged_view)) != 3:
        return None
    extra = b""
    if colorspace == "RGB" and implied_colorspace(merged_view) != "RGB":
        if has_jfif(merged_view) or adobe_transform(merged_view) is not None:
            return None  # a marker says YCbCr: a standalone decode would differ
        extra = adobe_segment(0)
    parts = [SOI, *(s.data for s in app), extra, *(s.data for s in table_segments)]
    parts += [s.data for s in other]
    parts.append(rest)
    return b"".join(parts)


@functools.lru_cache(maxsize=16)
def _table_segments(tables: bytes) -> tuple[Segment, ...]:
    """The DQT/DHT/DRI/DAC segments of a JPEGTables stream, parsed once per distinct value
    (a level's tiles all share one)."""
    return tuple(s for s in split_header(tables)[0] if s.marker in _TABLE_MARKERS)


def split_tables(stream: bytes) -> tuple[bytes, bytes]:
    """Split a full JPEG into (tables-only stream, abbreviated stream without DQT/DHT).

    The inverse of merging; used to write TIFF files with a shared JPEGTables tag.
    """
    segments, rest = split_header(stream)
    tables = [s.data for s in segments if s.marker in _TABLE_MARKERS]
    others = [s.data for s in segments if s.marker not in _TABLE_MARKERS]
    return SOI + b"".join(tables) + EOI, SOI + b"".join(others) + rest
