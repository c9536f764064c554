"""Assembling a CT volume: images decoded straight into one preallocated array, then ordered and checked.

``VolumeBuilder`` owns a (capacity, rows, columns) int16 array allocated once, when the first image arrives (its
capacity from the image count the PACS or the folder announced). Each image is written into the next free slot in
arrival order, converted to Hounsfield units on the way, so the only full-size array is the volume itself. At the
end, ``finish`` orders the slots by position along the slice normal (an in-place permutation, one slice of scratch
memory), turns the volume into the canonical patient frame, and runs the quality checks
(``imaging_cds.imaging.quality``).

Canonical frame: axis order (z, y, x) = (slice, row, column); x increases towards the patient's left, y towards
posterior, z towards superior: LPS, DICOM's patient coordinate system, for an axial series. Other planes are
permuted and flipped to the nearest LPS axes (``direction`` keeps the exact cosines, oblique series included).
Spacing comes from the positions (median step along the normal), never from SliceThickness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.quality import (
    AIR_HU,
    QualityCheckFailed,
    QualityLimits,
    QualityVerdict,
    SliceFacts,
    check_series,
)

HU_MIN, HU_MAX = -1024, 3071
_SAMPLE = 4  # the air fraction is counted on every 4th row and column


@dataclass(frozen=True)
class CtVolume:
    """A CT volume in Hounsfield units, in the canonical frame.

    ``hu``: int16, axis order (z, y, x), clipped to [-1024, 3071], padding set to -1024. ``spacing_mm``: (z, y, x)
    in mm. ``origin_lps_mm``: centre of voxel (0, 0, 0), LPS, mm. ``direction``: 3x3, column k is the LPS unit
    vector along axis k of (x, y, z), so a voxel (z, y, x) lies at origin + direction @ ((x, y, z) * spacing).
    ``sop_uids``: the instance of each z slice ('#n' appended for frame n of a multi-frame image).
    """

    study_uid: str
    series_uid: str
    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    sop_uids: tuple[str, ...]
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    verdict: QualityVerdict | None = field(default=None, compare=False)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0


@dataclass(frozen=True)
class SliceValues:
    """Stored pixel values of one image and how to turn them into HU."""

    stored: np.ndarray  # (rows, columns), integer or float
    slope: float
    intercept: float
    padding: tuple[int, int] | None  # stored values [low, high] that are padding (PixelPaddingValue / RangeLimit)


def store_hu(out: np.ndarray, image: SliceValues) -> tuple[int, int, int, int]:
    """Write HU of ``image`` into ``out`` (int16, same shape); returns (padded, clipped_high, air, sampled).

    The common case (slope 1, integer intercept, values in range) is one copy and one in-place add.
    """
    stored = image.stored
    padded = 0
    mask = None
    if image.padding is not None:
        low, high = image.padding
        mask = (stored >= low) & (stored <= high) if low != high else stored == low
        padded = int(np.count_nonzero(mask))
    lo, hi = (int(stored.min()), int(stored.max())) if stored.size else (0, 0)
    if (
        image.slope == 1.0
        and float(image.intercept).is_integer()
        and stored.dtype.kind in "ui"
        and stored.dtype.itemsize <= 2
        and lo + image.intercept >= -32768
        and hi + image.intercept <= 32767
        and hi <= 32767
    ):
        # Values fit int16 (checked above), so the stored integers are reinterpreted, not converted: one pass.
        native = stored.dtype.itemsize == 2 and stored.dtype.isnative
        signed = stored.view(np.int16) if native else stored.astype(np.int16)
        np.add(signed, np.int16(image.intercept), out=out)
        low_hu, high_hu = float(lo + int(image.intercept)), float(hi + int(image.intercept))
    else:
        hu = np.rint(stored.astype(np.float32) * np.float32(image.slope) + np.float32(image.intercept))
        low_hu, high_hu = float(hu.min()), float(hu.max())
        np.copyto(out, np.clip(hu, -32768, 32767), casting="unsafe")
    clipped_high = 0
    if high_hu > HU_MAX:
        clipped_high = int(np.count_nonzero(out > HU_MAX))
    if low_hu < HU_MIN:
        below = out < HU_MIN  # below the scale: outside the field of view, padding a header did not declare
        mask = below if mask is None else (mask | below)
        padded = int(np.count_nonzero(mask))
    if low_hu < HU_MIN or high_hu > HU_MAX:
        np.clip(out, HU_MIN, HU_MAX, out=out)
    if mask is not None and padded:
        out[mask] = HU_MIN
    sample = out[::_SAMPLE, ::_SAMPLE]
    air = int(np.count_nonzero(sample <= AIR_HU))
    if mask is not None and padded:
        air -= int(np.count_nonzero(mask[::_SAMPLE, ::_SAMPLE]))
    return padded, clipped_high, air, sample.size


@dataclass
class _Slot:
    facts: SliceFacts | None = None


class VolumeBuilder:
    """Images of one series, decoded into a preallocated volume in arrival order; ``finish`` orders and checks.

    Not thread-safe: one thread reserves and fills slots (decoding may happen elsewhere, the result is put here).
    """

    def __init__(self, study_uid: str, series_uid: str, expected_images: int = 0) -> None:
        self.study_uid = study_uid
        self.series_uid = series_uid
        self._expected = max(0, expected_images)
        self._buf: np.ndarray | None = None
        self._slots: list[_Slot] = []
        self._done = 0  # leading slots all filled
        self._filled: list[bool] = []

    @property
    def reserved(self) -> int:
        return len(self._slots)

    @property
    def ready(self) -> int:
        """Slots 0..ready-1 are all filled: ``slab(start, stop)`` may be read for stop <= ready."""
        return self._done

    @property
    def buffer(self) -> np.ndarray | None:
        return self._buf

    def facts(self, slot: int) -> SliceFacts:
        facts = self._slots[slot].facts
        if facts is None:
            raise ValueError(f"slot {slot} is not filled")
        return facts

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Filled slots [start, stop) as a view (z, y, x) of the volume array: no copy."""
        if self._buf is None or stop > self._done:
            raise ValueError(f"slots {start}..{stop} are not all filled ({self._done} are)")
        return self._buf[start:stop]

    def reserve(self, shape: tuple[int, int]) -> int:
        """The next slot, in arrival order; the volume array is allocated at the first one."""
        if self._buf is None:
            capacity = max(self._expected, 1)
            self._buf = np.empty((capacity, *shape), dtype=np.int16)
        elif len(self._slots) >= self._buf.shape[0]:
            self._grow()
        self._slots.append(_Slot())
        self._filled.append(False)
        return len(self._slots) - 1

    def put(self, slot: int, image: SliceValues, facts: SliceFacts) -> None:
        """Fill ``slot``: HU into the volume array when the image has the volume's size (else only its facts)."""
        assert self._buf is not None
        padded = clipped = air = sampled = 0
        if image.stored.shape == self._buf.shape[1:]:
            padded, clipped, air, sampled = store_hu(self._buf[slot], image)
        self._slots[slot].facts = SliceFacts(
            key=facts.key,
            shape=(int(image.stored.shape[0]), int(image.stored.shape[1])),
            position_lps_mm=facts.position_lps_mm,
            orientation=facts.orientation,
            pixel_spacing_mm=facts.pixel_spacing_mm,
            gantry_tilt_deg=facts.gantry_tilt_deg,
            padded=padded,
            clipped_high=clipped,
            air=air,
            sampled=sampled,
        )
        self._filled[slot] = True
        while self._done < len(self._filled) and self._filled[self._done]:
            self._done += 1

    def _grow(self) -> None:
        assert self._buf is not None
        bigger = np.empty((max(8, self._buf.shape[0] * 3 // 2), *self._buf.shape[1:]), dtype=np.int16)
        bigger[: self._buf.shape[0]] = self._buf
        self._buf = bigger

    def check(self, limits: QualityLimits) -> QualityVerdict:
        """The quality verdict under ``limits`` (no ordering, nothing raised): several models may read one series,
        each with its own limits."""
        slices, _, _, normal, positions = self._geometry()
        return check_series(self.series_uid, slices, limits, normal, positions)

    def _geometry(
        self,
    ) -> tuple[list[SliceFacts], _Frame, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(slice facts, frame, slot order along the slice normal, normal, sorted positions); the last two None when
        sizes, orientations or pixel spacings are mixed."""
        if not self._slots or self._buf is None:
            raise NotAnalyzableError(self.study_uid, f"series {self.series_uid}: no images")
        facts = [s.facts for s in self._slots]
        if any(f is None for f in facts):
            raise RuntimeError("finish() before every reserved slot was filled")
        slices: list[SliceFacts] = [f for f in facts if f is not None]
        geometry_ok = (
            len({f.shape for f in slices}) == 1
            and len({tuple(round(v, 3) for v in f.orientation) for f in slices}) == 1
            and len({tuple(round(v, 4) for v in f.pixel_spacing_mm) for f in slices}) == 1
        )
        normal = positions = None
        order = np.arange(len(slices))
        frame = _Frame.of(slices[0].orientation)
        if geometry_ok:
            normal = frame.normal
            along = np.array([np.dot(f.position_lps_mm, normal) for f in slices])
            order = np.argsort(along * frame.z_sign, kind="stable")
            positions = np.sort(along)
        return slices, frame, order, normal, positions

    def finish(self, limits: QualityLimits) -> CtVolume:
        """Order, canonicalise and check; raises QualityCheckFailed naming each failed check."""
        return self.finish_with(limits, ())[0]

    def finish_with(self, limits: QualityLimits, companions: Sequence[np.ndarray]) -> tuple[CtVolume, list[np.ndarray]]:
        """``finish``, and ``companions`` (arrays indexed like the slots on axis 0, e.g. model outputs of shape
        (n, rows, columns)) ordered, flipped and transposed exactly as the volume (in place where possible)."""
        slices, frame, order, normal, positions = self._geometry()
        verdict = check_series(self.series_uid, slices, limits, normal, positions)
        if not verdict.passed:
            raise QualityCheckFailed(self.study_uid, verdict)
        assert self._buf is not None
        n = len(slices)
        arrays = [self._buf[:n], *companions]
        for array in arrays:
            _permute_in_place(array, order)
            _flip_in_plane(array, frame.flip_y, frame.flip_x)
        ordered = [slices[i] for i in order]
        z_step = float(np.median(np.diff(positions))) if positions is not None and n > 1 else 1.0
        row_mm, col_mm = ordered[0].pixel_spacing_mm
        spacing: tuple[float, ...] = (z_step, row_mm, col_mm)  # (z, y, x) of the acquisition
        origin = _origin(ordered[0], frame, self._buf.shape[1:], spacing)
        direction = frame.axes
        if frame.transpose is not None:
            # A transpose moves no voxel: (0, 0, 0) stays where every axis starts; spacing and axes follow.
            arrays = [np.ascontiguousarray(a.transpose(frame.transpose)) for a in arrays]
            spacing = tuple(spacing[i] for i in frame.transpose)
            direction = tuple(frame.axes[2 - i] for i in reversed(frame.transpose))
        volume = CtVolume(
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            hu=arrays[0],
            spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin_lps_mm=origin,
            sop_uids=tuple(s.key for s in ordered),
            direction=tuple((round(float(d[0]), 6), round(float(d[1]), 6), round(float(d[2]), 6)) for d in direction),
            verdict=verdict,
        )
        return volume, arrays[1:]


@dataclass(frozen=True)
class _Frame:
    """How the acquisition axes map to the canonical frame."""

    normal: np.ndarray
    flip_x: bool
    flip_y: bool
    z_sign: float
    transpose: tuple[int, int, int] | None  # axes of the (z, y, x) acquisition array, in canonical order
    axes: tuple[tuple[float, float, float], ...]  # LPS unit vectors of the acquisition (x, y, z) after flips

    @classmethod
    def of(cls, orientation: Sequence[float]) -> _Frame:
        row = np.asarray(orientation[:3], dtype=float)
        col = np.asarray(orientation[3:], dtype=float)
        normal = np.cross(row, col)
        normal /= np.linalg.norm(normal) or 1.0
        dominant = [int(np.argmax(np.abs(v))) for v in (row, col, normal)]
        flip_x = row[dominant[0]] < 0
        flip_y = col[dominant[1]] < 0
        z_sign = -1.0 if normal[dominant[2]] < 0 else 1.0
        x_axis = -row if flip_x else row
        y_axis = -col if flip_y else col
        z_axis = normal * z_sign
        transpose = None
        if sorted(dominant) == [0, 1, 2] and dominant != [0, 1, 2]:
            # acquisition axis k (x=0, y=1, z=2) points along patient axis dominant[k]; canonical array axes are
            # (S, P, L) = patient axes (2, 1, 0); the array's axes are (z, y, x) = acquisition (2, 1, 0).
            acq_of_patient = {p: k for k, p in enumerate(dominant)}
            transpose = (2 - acq_of_patient[2], 2 - acq_of_patient[1], 2 - acq_of_patient[0])
        axes = tuple(tuple(float(v) for v in a) for a in (x_axis, y_axis, z_axis))
        return cls(normal, bool(flip_x), bool(flip_y), z_sign, transpose, axes)  # type: ignore[arg-type]


def _permute_in_place(array: np.ndarray, order: np.ndarray) -> None:
    """array[i] = old array[order[i]] along axis 0, following cycles with one slice of scratch memory."""
    n = len(order)
    seen = np.zeros(n, dtype=bool)
    for start in range(n):
        if seen[start] or order[start] == start:
            seen[start] = True
            continue
        scratch = array[start].copy()
        j = start
        while True:
            seen[j] = True
            k = int(order[j])
            if k == start:
                array[j] = scratch
                break
            array[j] = array[k]
            j = k


def _flip_in_plane(array: np.ndarray, flip_y: bool, flip_x: bool) -> None:
    if not (flip_x or flip_y):
        return
    for k in range(array.shape[0]):
        s = array[k]
        s[...] = s[:: -1 if flip_y else 1, :: -1 if flip_x else 1].copy()


def _origin(
    first: SliceFacts, frame: _Frame, shape: tuple[int, ...], spacing: tuple[float, ...]
) -> tuple[float, float, float]:
    """LPS position of the centre of voxel (0, 0, 0): the first slice's first pixel, moved by the in-plane flips."""
    origin = np.asarray(first.position_lps_mm, dtype=float)
    orientation = np.asarray(first.orientation, dtype=float)
    rows, cols = shape[0], shape[1]
    if frame.flip_x:
        origin = origin + orientation[:3] * (cols - 1) * spacing[2]
    if frame.flip_y:
        origin = origin + orientation[3:] * (rows - 1) * spacing[1]
    return (float(origin[0]), float(origin[1]), float(origin[2]))


def assemble_volume(
    study_uid: str, series_uid: str, slices: Sequence[CtSliceLike], limits: QualityLimits | float
) -> CtVolume:
    """A volume from already decoded slices (tests, small tools); the streaming path uses ``VolumeBuilder``.

    ``limits``: the model's quality limits, or (older callers) just the largest slice spacing accepted.
    """
    if isinstance(limits, int | float):
        limits = QualityLimits(max_slice_spacing_mm=float(limits))
    if not slices:
        raise NotAnalyzableError(study_uid, f"series {series_uid}: no images")
    builder = VolumeBuilder(study_uid, series_uid, len(slices))
    for s in slices:
        slot = builder.reserve(s.hu.shape)
        builder.put(
            slot,
            SliceValues(stored=s.hu, slope=1.0, intercept=0.0, padding=None),
            SliceFacts(
                key=s.sop_uid,
                shape=s.hu.shape,
                position_lps_mm=s.position_lps_mm,
                orientation=s.orientation,
                pixel_spacing_mm=s.pixel_spacing_mm,
                gantry_tilt_deg=0.0,
            ),
        )
    return builder.finish(limits)


class CtSliceLike(Protocol):
    """What ``assemble_volume`` reads of a decoded slice: ``imaging.slices.CtSlice`` (not imported here, to avoid an
    import cycle) or anything with the same read-only fields."""

    @property
    def sop_uid(self) -> str: ...
    @property
    def position_lps_mm(self) -> tuple[float, float, float]: ...
    @property
    def orientation(self) -> tuple[float, float, float, float, float, float]: ...
    @property
    def pixel_spacing_mm(self) -> tuple[float, float]: ...
    @property
    def hu(self) -> np.ndarray: ...
