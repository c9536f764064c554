"""Reading one DICOM instance (Part 10 bytes) without building a pydicom Dataset: geometry and pixel layout only.

``read_instance`` walks the data elements once, keeps the few attributes a volume needs (listed in ``_WANTED``)
and locates the pixel data; every other attribute, the patient's name and IDs included, is skipped unread. That
is both the fast path (a 512x512 CT header in tens of microseconds, where a full ``pydicom.dcmread`` takes half a
millisecond) and privacy by construction: what is not read cannot leak downstream.

Explicit and implicit VR little endian and deflated explicit VR little endian are walked here, as are all the
encapsulated (compressed) transfer syntaxes, which are explicit VR little endian. Big endian instances and
multi-frame (enhanced) instances with per-frame functional groups are read with pydicom's parser, and give the
same ``InstanceHeader``.

Units and conventions: positions and spacings in mm, patient coordinates LPS (DICOM's patient frame),
``orientation`` = ImageOrientationPatient (row direction cosines, then column direction cosines),
``pixel_spacing_mm`` = PixelSpacing = (spacing between rows, spacing between columns) = (y, x).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR", b"SV", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_PER_FRAME = 0x52009230
_SHARED = 0x52009229

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_VR = struct.Struct("<HH2s")

# tag -> (attribute, kind); kind: s = text, n = numbers (DS/IS text), u16 = US, ss = SS/US (padding; signedness
# follows PixelRepresentation), m = multi-valued text
_WANTED: dict[int, tuple[str, str]] = {
    0x00020010: ("transfer_syntax", "s"),
    0x00080008: ("image_type", "m"),
    0x00080016: ("sop_class_uid", "s"),
    0x00080018: ("sop_uid", "s"),
    0x00080060: ("modality", "s"),
    0x00180050: ("slice_thickness_mm", "n"),
    0x00181120: ("gantry_tilt_deg", "n"),
    0x00200013: ("instance_number", "n"),
    0x00200032: ("position_lps_mm", "n"),
    0x00200037: ("orientation", "n"),
    0x00280002: ("samples_per_pixel", "u16"),
    0x00280004: ("photometric", "s"),
    0x00280006: ("planar_configuration", "u16"),
    0x00280008: ("frames", "n"),
    0x00280010: ("rows", "u16"),
    0x00280011: ("columns", "u16"),
    0x00280030: ("pixel_spacing_mm", "n"),
    0x00280100: ("bits_allocated", "u16"),
    0x00280101: ("bits_stored", "u16"),
    0x00280103: ("pixel_representation", "u16"),
    0x00280120: ("padding_value", "ss"),
    0x00280121: ("padding_limit", "ss"),
    0x00280301: ("burned_in_annotation", "s"),
    0x00281052: ("rescale_intercept", "n"),
    0x00281053: ("rescale_slope", "n"),
}


class InstanceError(ValueError):
    """The bytes are not a readable DICOM image; the message says what is wrong (no patient data)."""


@dataclass(frozen=True)
class FrameGeometry:
    """Geometry and rescale of one frame (the instance's own for single-frame images)."""

    position_lps_mm: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    rescale_slope: float
    rescale_intercept: float


@dataclass(frozen=True)
class InstanceHeader:
    """What a volume needs of one instance, and where its pixel data lies in the instance's bytes."""

    transfer_syntax: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    slice_thickness_mm: float | None
    gantry_tilt_deg: float
    instance_number: int | None
    padding_value: int | None
    padding_limit: int | None
    burned_in_annotation: str
    geometry: tuple[FrameGeometry, ...]  # one per frame
    pixel_offset: int  # start of the PixelData value in ``data``
    pixel_length: int  # bytes; -1 = encapsulated, undefined length (up to the end of ``data``)
    data: bytes | bytearray | memoryview  # the bytes the offsets refer to (inflated for deflated syntaxes)

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax not in NATIVE_SYNTAXES

    @property
    def has_pixels(self) -> bool:
        return self.pixel_offset >= 0

    def native_frame(self, index: int) -> np.ndarray:
        """Stored values of frame ``index`` (rows, columns), a view of ``data`` (no copy); native syntaxes only."""
        if not self.has_pixels:
            raise InstanceError("no pixel data")
        if self.samples_per_pixel != 1:
            raise InstanceError(f"{self.samples_per_pixel} samples per pixel; a CT image has 1")
        if self.bits_allocated not in (8, 16, 32):
            raise InstanceError(f"{self.bits_allocated} bits allocated is not supported")
        itemsize = self.bits_allocated // 8
        kind = "i" if self.pixel_representation else "u"
        order = ">" if self.transfer_syntax == EXPLICIT_BE else "<"
        dtype = np.dtype(f"{order}{kind}{itemsize}")
        count = self.rows * self.columns
        offset = self.pixel_offset + index * count * itemsize
        available = min(self.pixel_length, len(self.data) - self.pixel_offset)
        if available < (index + 1) * count * itemsize:
            raise InstanceError(
                f"pixel data holds {available} bytes, frame {index + 1} needs {(index + 1) * count * itemsize}"
            )
        frame = np.frombuffer(self.data, dtype=dtype, count=count, offset=offset).reshape(self.rows, self.columns)
        if self.pixel_representation and self.bits_stored < self.bits_allocated:
            shift = self.bits_allocated - self.bits_stored  # sign-extend values stored in fewer bits
            frame = (frame << shift) >> shift
        return frame

    def encapsulated_value(self) -> bytes:
        """The encapsulated PixelData value (offset table item, fragments), as pydicom's decoders take it."""
        end = len(self.data) if self.pixel_length < 0 else self.pixel_offset + self.pixel_length
        return bytes(self.data[self.pixel_offset : end])

    def decoder_options(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric or "MONOCHROME2",
            "number_of_frames": self.frames,
            "planar_configuration": self.planar_configuration,
        }


def read_instance(data: bytes | bytearray | memoryview) -> InstanceHeader:
    """The header facts and pixel data location of one Part 10 instance (or a bare dataset in implicit VR LE)."""
    view = memoryview(data)
    pos = 132 if len(view) >= 132 and bytes(view[128:132]) == b"DICM" else 0
    values: dict[str, Any] = {}
    # File meta after the preamble, or (as some PACS send parts and some tools write files) without one.
    if pos or (len(view) >= 8 and _U16.unpack_from(view, 0)[0] == 0x0002):
        pos = _walk(view, pos, True, values, meta_only=True)
    syntax = str(values.get("transfer_syntax") or IMPLICIT_LE)
    if syntax == EXPLICIT_BE:
        return _read_with_pydicom(data, syntax)
    if syntax == DEFLATED_LE:
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(view[pos:])
        view, pos, data = memoryview(inflated), 0, inflated
    explicit = syntax != IMPLICIT_LE
    try:
        _walk(view, pos, explicit, values)
    except _NeedsFullParse:
        return _read_with_pydicom(data, syntax)
    except (struct.error, IndexError) as err:
        raise InstanceError(f"truncated or malformed DICOM data ({err})") from err
    return _header(values, syntax, data)


class _NeedsFullParse(Exception):
    """Per-frame functional groups: the geometry lies in sequences, read with pydicom."""


def _walk(view: memoryview, pos: int, explicit: bool, out: dict[str, Any], meta_only: bool = False) -> int:
    """Walk top-level elements from ``pos``, filling ``out``; returns the position after the last one read."""
    end = len(view)
    while pos + 8 <= end:
        group = _U16.unpack_from(view, pos)[0]
        if meta_only and group != 0x0002:
            return pos
        tag, vr, length, pos = _element_header(view, pos, explicit or group == 0x0002)
        if tag == _PIXEL_DATA:
            out["pixel_offset"] = pos
            out["pixel_length"] = -1 if length == _UNDEFINED else length
            return pos
        if tag in (_PER_FRAME, _SHARED):
            raise _NeedsFullParse
        if length == _UNDEFINED:
            pos = _skip_undefined(view, pos, explicit and vr != b"UN")
            continue
        wanted = _WANTED.get(tag)
        if wanted is not None:
            name, kind = wanted
            raw = view[pos : pos + length]
            if kind in ("u16", "ss"):
                out[name] = _U16.unpack_from(raw)[0] if length >= 2 else None
            else:
                text = bytes(raw).decode("ascii", "replace").strip(" \x00")
                out[name] = text if kind in ("s", "m") else _numbers(text)
        pos += length
    return pos


def _element_header(view: memoryview, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, position of the value) of the element at ``pos``; VR is meaningless if implicit."""
    group, element, vr = _TAG_VR.unpack_from(view, pos)
    tag = (group << 16) | element
    if not explicit:
        return tag, vr, _U32.unpack_from(view, pos + 4)[0], pos + 8
    if vr in _LONG_VRS:
        return tag, vr, _U32.unpack_from(view, pos + 8)[0], pos + 12
    return tag, vr, _U16.unpack_from(view, pos + 6)[0], pos + 8


def _skip_undefined(view: memoryview, pos: int, explicit: bool) -> int:
    """Skip a sequence of undefined length: its items, nested sequences included, then the delimiter."""
    while True:
        tag = (_U16.unpack_from(view, pos)[0] << 16) | _U16.unpack_from(view, pos + 2)[0]
        length = _U32.unpack_from(view, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise InstanceError(f"expected a sequence item at byte {pos - 8}")
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(view, pos, explicit)


def _skip_item(view: memoryview, pos: int, explicit: bool) -> int:
    while True:
        tag, vr, length, pos = _element_header(view, pos, explicit)
        if tag == _ITEM_END:
            return pos
        if length == _UNDEFINED:
            pos = _skip_undefined(view, pos, explicit and vr != b"UN")
        else:
            pos += length


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split("\\") if v.strip())
    except ValueError:
        return ()


def _header(values: dict[str, Any], syntax: str, data: bytes | bytearray | memoryview) -> InstanceHeader:
    def first(name: str, default: float | None) -> float | None:
        v = values.get(name)
        return float(v[0]) if v else default

    pixel_representation = int(values.get("pixel_representation") or 0)
    bits_allocated = int(values.get("bits_allocated") or 16)
    geometry = FrameGeometry(
        position_lps_mm=_fixed(values.get("position_lps_mm"), 3),  # type: ignore[arg-type]
        orientation=_fixed(values.get("orientation"), 6),  # type: ignore[arg-type]
        pixel_spacing_mm=_fixed(values.get("pixel_spacing_mm"), 2),  # type: ignore[arg-type]
        rescale_slope=first("rescale_slope", 1.0) or 1.0,
        rescale_intercept=first("rescale_intercept", 0.0) or 0.0,
    )
    frames = int(first("frames", 1) or 1)
    instance_number = first("instance_number", None)
    return InstanceHeader(
        transfer_syntax=syntax,
        sop_uid=str(values.get("sop_uid", "")),
        sop_class_uid=str(values.get("sop_class_uid", "")),
        modality=str(values.get("modality", "")).upper(),
        image_type=tuple(v.strip().upper() for v in str(values.get("image_type", "")).split("\\") if v.strip()),
        rows=int(values.get("rows") or 0),
        columns=int(values.get("columns") or 0),
        frames=frames,
        samples_per_pixel=int(values.get("samples_per_pixel") or 1),
        bits_allocated=bits_allocated,
        bits_stored=int(values.get("bits_stored") or bits_allocated),
        pixel_representation=pixel_representation,
        photometric=str(values.get("photometric", "")).upper(),
        planar_configuration=int(values.get("planar_configuration") or 0),
        slice_thickness_mm=first("slice_thickness_mm", None),
        gantry_tilt_deg=first("gantry_tilt_deg", 0.0) or 0.0,
        instance_number=None if instance_number is None else int(instance_number),
        padding_value=_signed(values.get("padding_value"), pixel_representation),
        padding_limit=_signed(values.get("padding_limit"), pixel_representation),
        burned_in_annotation=str(values.get("burned_in_annotation", "")).upper(),
        geometry=(geometry,) * frames,
        pixel_offset=int(values.get("pixel_offset", -1)),
        pixel_length=int(values.get("pixel_length", 0)),
        data=data,
    )


def _fixed(value: tuple[float, ...] | None, n: int) -> tuple[float, ...] | None:
    return tuple(value) if value is not None and len(value) == n else None


def _signed(value: int | None, pixel_representation: int) -> int | None:
    if value is None:
        return None
    return value - 0x10000 if pixel_representation and value >= 0x8000 else value


def _read_with_pydicom(data: bytes | bytearray | memoryview, syntax: str) -> InstanceHeader:
    """Big endian, or multi-frame with functional groups: pydicom parses the header (pixels stay unread)."""
    import pydicom

    fp = io.BytesIO(bytes(data))
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    except Exception as err:  # pydicom raises many types for malformed data
        raise InstanceError(f"malformed DICOM data ({type(err).__name__}: {err})") from err
    values = header_values(ds)
    buf = fp.getvalue()
    pos = fp.tell()
    # The PixelData element header follows where pydicom stopped.
    big = syntax == EXPLICIT_BE
    if pos + 8 <= len(buf):
        fmt = ">" if big else "<"
        group, element = struct.unpack_from(f"{fmt}HH", buf, pos)
        if (group << 16) | element == _PIXEL_DATA:
            if syntax == IMPLICIT_LE:
                length, start = struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
            else:
                length, start = struct.unpack_from(f"{fmt}I", buf, pos + 8)[0], pos + 12
            values["pixel_offset"] = start
            values["pixel_length"] = -1 if length == _UNDEFINED else length
    header = _header(values, syntax, buf)
    frames = frame_geometries(ds, header.frames)
    if frames is not None:
        header = _replace_geometry(header, frames)
    return header


def header_values(ds: Any) -> dict[str, Any]:
    """The ``_WANTED`` attributes of a pydicom Dataset, in ``read_instance``'s raw form."""
    values: dict[str, Any] = {}
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        values["transfer_syntax"] = str(meta.TransferSyntaxUID)
    for tag, (name, kind) in _WANTED.items():
        if tag >> 16 == 0x0002 or tag not in ds:
            continue
        value = ds[tag].value
        if value is None or value == "":
            continue
        if kind in ("u16", "ss"):
            values[name] = int(value[0] if isinstance(value, list | tuple) else value) & 0xFFFF
        elif kind in ("s", "m"):
            values[name] = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
        else:
            items = value if _is_multi(value) else [value]
            values[name] = tuple(float(v) for v in items)
    return values


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def frame_geometries(ds: Any, frames: int) -> tuple[FrameGeometry, ...] | None:
    """Per-frame geometry of an enhanced (multi-frame) image from its functional groups; None if it has none."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return None
    base = shared[0] if shared else None
    result = []
    for i in range(frames):
        item = per_frame[i] if per_frame and i < len(per_frame) else None
        position = _group_value(item, base, "PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = _group_value(item, base, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        spacing = _group_value(item, base, "PixelMeasuresSequence", "PixelSpacing", 2)
        slope = _group_value(item, base, "PixelValueTransformationSequence", "RescaleSlope", 1)
        intercept = _group_value(item, base, "PixelValueTransformationSequence", "RescaleIntercept", 1)
        result.append(
            FrameGeometry(
                position_lps_mm=position,  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing_mm=spacing,  # type: ignore[arg-type]
                rescale_slope=slope[0] if slope else 1.0,
                rescale_intercept=intercept[0] if intercept else 0.0,
            )
        )
    return tuple(result)


def _group_value(item: Any, shared: Any, sequence: str, keyword: str, n: int) -> tuple[float, ...] | None:
    for source in (item, shared):
        if source is None or sequence not in source or not source[sequence].value:
            continue
        inner = source[sequence].value[0]
        if keyword in inner and inner[keyword].value not in (None, ""):
            value = inner[keyword].value
            items = value if _is_multi(value) else [value]
            floats = tuple(float(v) for v in items)
            if len(floats) == n:
                return floats
    return None


def _replace_geometry(header: InstanceHeader, frames: tuple[FrameGeometry, ...]) -> InstanceHeader:
    from dataclasses import replace

    return replace(header, geometry=frames)
