"""Lung segmentation post-processing and quantitative lung density (LAA-950, MLD, P15).

The ``lung-density`` ONNX model marks air-like voxels (``lung_candidate``); :func:`extract_lungs` does the part a
graph cannot express (3D connected components, airway removal, hole filling) and :func:`measure_lung_density`
computes the standard emphysema measures on the resulting mask.

Conventions
-----------
- Volumes are numpy arrays indexed ``(z, y, x)``: axial slice, image row, image column. The slice order may run
  head->feet or feet->head; nothing here depends on it.
- ``spacing_mm`` is ``(z, y, x)`` in millimetres: slice spacing, row spacing, column spacing.
- HU arrays hold Hounsfield units (rescale slope/intercept already applied), ideally as integers (int16).
- Volumes are reported in mL (1 mL = 1000 mm^3).

Definitions (as in COPDGene and most CT densitometry literature): LAA-950 is the percentage of lung voxels below
-950 HU; MLD is the mean lung HU; P15 is the 15th percentile of the lung HU histogram with linear interpolation
between order statistics (numpy's default ``percentile`` method).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cc3d
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "KEY_IMAGE_LABEL",
    "KEY_IMAGE_MAX_BYTES",
    "LAA_THRESHOLD_HU",
    "MIN_LUNG_VOLUME_ML",
    "LungDensityMeasures",
    "NoLungFoundError",
    "extract_lungs",
    "key_image_slice",
    "measure_lung_density",
    "render_key_image",
]

Spacing = tuple[float, float, float]
BoolVolume = npt.NDArray[np.bool_]

LAA_THRESHOLD_HU = -950
P15_PERCENTILE = 15.0
MIN_LUNG_VOLUME_ML = 500.0
"""Below this the mask is not a pair of lungs (wrong body part, severe disease, failed segmentation)."""

COARSE_PIXEL_MM = 1.4
"""Component selection runs on a copy pooled in-plane to about this pixel size; the returned mask is full size."""
MIN_COMPONENT_ML = 5.0
SECOND_LUNG_MIN_FRACTION = 0.05
"""A second component is kept as the other lung only if it is at least this fraction of the largest one."""
SECOND_LUNG_MIN_HEIGHT = 0.5
"""...and span at least this fraction of its craniocaudal extent."""
MAX_AIRWAY_AREA_MM2 = 1500.0
"""Largest cross-section still traced as trachea or main bronchus; a lung slice is far larger."""
MIN_TRACHEA_LENGTH_MM = 20.0
MAX_AIRWAY_LENGTH_MM = 250.0
TRACHEA_MAX_OFFCENTRE = 0.2
"""The trachea seed must lie within this fraction of the lungs' left-right extent from their middle."""

LUNG_WINDOW_LEVEL_HU = -600.0
LUNG_WINDOW_WIDTH_HU = 1500.0
OUTLINE_RGB = (0, 200, 255)
LAA_TINT_RGB = (255, 170, 0)
LAA_TINT_ALPHA = 0.6
KEY_IMAGE_LABEL = "AI result - not for diagnosis"
KEY_IMAGE_MAX_BYTES = 300_000
"""The key image travels base64 inside the DiagnosticReport; EHRs cap attachment sizes, so it stays below this."""
# The key image is an 8-bit indexed PNG (a third of an RGB one's size on noisy CT): 192 gray levels, 48 levels of
# amber-tinted gray, the outline colour, and the label's background with four anti-aliasing steps to white text.
_GRAY_LEVELS = 192
_TINT_LEVELS = 48
_OUTLINE_INDEX = _GRAY_LEVELS + _TINT_LEVELS
_LABEL_BACKGROUND_INDEX = _OUTLINE_INDEX + 1
_LABEL_STEPS = 4
_LABEL_BACKGROUND_RGB = (16, 16, 16)
_LABEL_TEXT_RGB = (255, 255, 255)

_IN_PLANE_CROSS = np.array(
    [np.zeros((3, 3), dtype=bool), [[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.zeros((3, 3), dtype=bool)], dtype=bool
)


class NoLungFoundError(ValueError):
    """The volume holds no plausible lungs, so no lung measurement can be reported."""


@dataclass(frozen=True)
class LungDensityMeasures:
    """Lung densitometry of one CT series."""

    lung_volume_ml: float
    laa950_percent: float  # % of lung voxels below -950 HU
    mean_lung_density_hu: float
    p15_hu: float  # 15th percentile of lung HU
    voxel_count: int


# --------------------------------------------------------------------------------------------------------------------
# Segmentation post-processing
# --------------------------------------------------------------------------------------------------------------------


def extract_lungs(candidate: npt.NDArray[np.generic], spacing_mm: Spacing) -> BoolVolume:
    """The lungs, from the ``lung_candidate`` output of the ``lung-density`` model.

    ``candidate`` is a ``(z, y, x)`` array, non-zero where a voxel is air-like; ``spacing_mm`` is ``(z, y, x)`` in mm.
    Returns a boolean ``(z, y, x)`` mask of the same shape: both lungs with the vessels inside them, without the
    trachea and main bronchi, the air around the patient or gas elsewhere in the body. An empty mask means no lung.

    Steps: pool in-plane to ~1.4 mm (a coarse voxel is air only if all its fine voxels are), label 3D components,
    drop those touching the in-plane image border (air around the patient), trace the trachea and main bronchi from
    their open end slice by slice and remove them, keep the largest component and the second largest if it is a
    plausible second lung, fill holes (vessels) slice by slice, then return to full resolution: the fine candidate
    voxels within one coarse voxel of the kept lungs, plus the filled holes.
    """
    fine = np.asarray(candidate) != 0
    if fine.ndim != 3:
        raise ValueError(f"candidate must be a (z, y, x) volume, got shape {fine.shape}")
    factor = max(1, round(COARSE_PIXEL_MM / min(spacing_mm[1], spacing_mm[2])))
    coarse = _all_pool(fine, factor)
    coarse_spacing = (spacing_mm[0], spacing_mm[1] * factor, spacing_mm[2] * factor)

    lungs = np.zeros(fine.shape, dtype=bool)
    found = _inner_air(coarse, coarse_spacing)
    if found is None:
        return lungs
    inner, largest, box = found
    airway = _trace_airway(largest, inner, coarse_spacing)
    kept = _largest_lungs(inner & ~airway, coarse_spacing)
    if not kept.any():
        return lungs
    holes = _holes_in_plane(kept)

    near_lung = _dilate_in_plane(kept)
    near_airway = _dilate_in_plane(airway) & ~kept
    fine_box = (
        box[0],
        slice(box[1].start * factor, box[1].stop * factor),
        slice(box[2].start * factor, box[2].stop * factor),
    )
    lungs[fine_box] = (fine[fine_box] & _upsample(near_lung & ~near_airway, factor)) | _upsample(holes, factor)
    return lungs


def lung_box(mask: BoolVolume) -> tuple[slice, slice, slice]:
    """The bounding box of the voxels set in a ``(z, y, x)`` mask (the whole volume when none is). The lungs fill
    about a third of a chest CT's volume, so measurements of them read only this box."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return slice(None), slice(None), slice(None)
    plane = np.any(mask[int(z[0]) : int(z[-1]) + 1], axis=0)
    y, x = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return slice(int(z[0]), int(z[-1]) + 1), slice(int(y[0]), int(y[-1]) + 1), slice(int(x[0]), int(x[-1]) + 1)


def _upsample(mask: BoolVolume, factor: int) -> BoolVolume:
    if factor == 1:
        return mask
    return np.repeat(np.repeat(mask, factor, axis=1), factor, axis=2)


def _label_3d(mask: BoolVolume) -> tuple[npt.NDArray[np.unsignedinteger], int]:
    """Face-connected (6-neighbour) components of a 3D mask, numbered from 1 in raster order of their first voxel:
    the labels of ``ndimage.label(mask)``, from cc3d, about four times faster on a chest CT's coarse mask."""
    labels, count = cc3d.connected_components(mask, connectivity=6, return_N=True)
    return labels, int(count)


def _dilate_in_plane(mask: BoolVolume) -> BoolVolume:
    """Binary dilation by a 3x3 in-plane square (nothing set outside the array): the same as
    ``ndimage.binary_dilation(mask, _IN_PLANE_SQUARE)``, as four shifted ORs."""
    rows = mask.copy()
    rows[:, 1:, :] |= mask[:, :-1, :]
    rows[:, :-1, :] |= mask[:, 1:, :]
    out = rows.copy()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out


def _all_pool(mask: BoolVolume, factor: int) -> BoolVolume:
    """In-plane pooling by ``factor``: a coarse voxel is set only if every fine voxel under it is set."""
    if factor == 1:
        return mask
    rows, cols = mask.shape[1] // factor, mask.shape[2] // factor
    pooled = mask[:, 0 : rows * factor : factor, 0 : cols * factor : factor].copy()
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                pooled &= mask[:, dy : rows * factor : factor, dx : cols * factor : factor]
    return pooled


def _inner_air(coarse: BoolVolume, spacing_mm: Spacing) -> tuple[BoolVolume, BoolVolume, tuple[slice, ...]] | None:
    """Air inside the body that could be lung: (all such components, the largest one, their bounding box).

    The masks are cropped to the box, which has a two-voxel in-plane margin. None if there is no such air.
    """
    labels, n = _label_3d(coarse)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    border = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    sizes[np.unique(border)] = 0
    voxel_ml = math.prod(spacing_mm) / 1000.0
    largest = int(sizes.max())
    if largest * voxel_ml < MIN_COMPONENT_ML:
        return None
    keep = sizes >= max(SECOND_LUNG_MIN_FRACTION * largest, MIN_COMPONENT_ML / voxel_ml)
    kept = keep[labels]
    z, y, x = lung_box(kept)  # kept holds the largest component at least, so the box is never the whole volume
    box = (z, _widened(y, 2, kept.shape[1]), _widened(x, 2, kept.shape[2]))
    return np.asarray(kept[box]), np.asarray(labels[box] == int(np.argmax(sizes))), box


def _widened(extent: slice, margin: int, size: int) -> slice:
    return slice(max(extent.start - margin, 0), min(extent.stop + margin, size))


def _trace_airway(connected: BoolVolume, inner: BoolVolume, spacing_mm: Spacing) -> BoolVolume:
    """Trachea and main bronchi, traced slice by slice from the trachea's open end until they enter the lungs.

    ``connected`` is the air component that holds the airway (the largest: lungs joined by the trachea), ``inner``
    all air that may be lung, whose left-right extent gives the midline. The trachea's end is whichever end slice of
    ``connected`` holds a small component near the midline that stays a single small tube for at least
    ``MIN_TRACHEA_LENGTH_MM``. From there each slice's airway is the set of 2D components that overlap the previous
    slice's airway and are no larger than ``MAX_AIRWAY_AREA_MM2``; a bronchus stops being traced in the slice where
    it merges with a lung. Empty if no trachea is found (e.g. a scan that starts below it).
    """
    airway = np.zeros(connected.shape, dtype=bool)
    slices = np.flatnonzero(connected.any(axis=(1, 2)))
    columns = np.flatnonzero(inner.any(axis=(0, 1)))
    if slices.size == 0:
        return airway
    middle = (columns[0] + columns[-1]) / 2.0
    width = float(columns[-1] - columns[0] + 1)
    max_area = MAX_AIRWAY_AREA_MM2 / (spacing_mm[1] * spacing_mm[2])
    min_run = math.ceil(MIN_TRACHEA_LENGTH_MM / spacing_mm[0])
    max_run = math.ceil(MAX_AIRWAY_LENGTH_MM / spacing_mm[0])

    best: tuple[float, dict[int, BoolVolume]] | None = None
    for start, step in ((int(slices[0]), 1), (int(slices[-1]), -1)):
        seed, offcentre = _trachea_seed(connected[start], middle, width, max_area)
        if seed is None:
            continue
        traced, single_run = _follow_airway(connected, start, step, seed, max_area, max_run)
        if single_run >= min_run and (best is None or offcentre < best[0]):
            best = (offcentre, traced)
    if best is not None:
        for z, mask in best[1].items():
            airway[z] = mask
    return airway


def _trachea_seed(plane: BoolVolume, middle: float, width: float, max_area: float) -> tuple[BoolVolume | None, float]:
    """The small component of an end slice closest to the lungs' midline, if it is central enough."""
    labels, n = ndimage.label(plane)
    if n == 0:
        return None, math.inf
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    centres = ndimage.center_of_mass(plane, labels, range(1, n + 1))
    best_id, best_offcentre = 0, math.inf
    for index, centre in enumerate(centres, start=1):
        offcentre = abs(float(centre[1]) - middle) / width
        if areas[index] <= max_area and offcentre < best_offcentre:
            best_id, best_offcentre = index, offcentre
    if best_id == 0 or best_offcentre > TRACHEA_MAX_OFFCENTRE:
        return None, math.inf
    return np.asarray(labels == best_id), best_offcentre


def _follow_airway(
    air: BoolVolume, start: int, step: int, seed: BoolVolume, max_area: float, max_run: int
) -> tuple[dict[int, BoolVolume], int]:
    """Airway masks per slice from ``start``, and how many leading slices held exactly one airway component."""
    traced = {start: seed}
    previous = seed
    single_run, counting = 1, True
    z = start + step
    while 0 <= z < air.shape[0] and abs(z - start) < max_run:
        labels, n = ndimage.label(air[z])
        if n == 0:
            break
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        overlapping = np.unique(labels[previous])
        ids = [int(i) for i in overlapping if i != 0 and areas[i] <= max_area]
        if not ids:
            break
        current = np.isin(labels, ids)
        traced[z] = current
        if counting and len(ids) == 1:
            single_run += 1
        else:
            counting = False
        previous = current
        z += step
    return traced, single_run


def _largest_lungs(air: BoolVolume, spacing_mm: Spacing) -> BoolVolume:
    """The largest air component, plus the second largest if it can be the other lung.

    The second must hold at least ``SECOND_LUNG_MIN_FRACTION`` of the largest one's volume and span at least
    ``SECOND_LUNG_MIN_HEIGHT`` of its craniocaudal extent, which rules out bowel gas when the lungs touch.
    """
    labels, n = _label_3d(air)
    if n == 0:
        return np.zeros(air.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    voxel_ml = math.prod(spacing_mm) / 1000.0
    first, keep = int(order[0]), [int(order[0])]
    if n >= 2:
        second = int(order[1])
        boxes = ndimage.find_objects(labels, max_label=max(first, second))
        height = boxes[second - 1][0].stop - boxes[second - 1][0].start
        tall_enough = height >= SECOND_LUNG_MIN_HEIGHT * (boxes[first - 1][0].stop - boxes[first - 1][0].start)
        big_enough = sizes[second] >= max(SECOND_LUNG_MIN_FRACTION * sizes[first], MIN_COMPONENT_ML / voxel_ml)
        if big_enough and tall_enough:
            keep.append(second)
    lut = np.zeros(n + 1, dtype=bool)
    lut[keep] = True
    return np.asarray(lut[labels])


def _holes_in_plane(mask: BoolVolume) -> BoolVolume:
    """Voxels outside ``mask`` that are enclosed by it within their own slice (vessels, airway walls)."""
    background, n = ndimage.label(~mask, structure=_IN_PLANE_CROSS)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    border = np.concatenate(
        [
            background[:, 0, :].ravel(),
            background[:, -1, :].ravel(),
            background[:, :, 0].ravel(),
            background[:, :, -1].ravel(),
        ]
    )
    enclosed = np.ones(n + 1, dtype=bool)
    enclosed[np.unique(border)] = False
    enclosed[0] = False
    return np.asarray(enclosed[background])


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def measure_lung_density(
    hu: npt.NDArray[np.generic], lung_mask: BoolVolume, spacing_mm: Spacing
) -> LungDensityMeasures:
    """LAA-950, mean lung density and P15 of the voxels in ``lung_mask``.

    ``hu`` and ``lung_mask`` are ``(z, y, x)`` arrays of one shape; ``spacing_mm`` is ``(z, y, x)`` in mm. Raises
    :class:`NoLungFoundError` when the mask is empty or smaller than ``MIN_LUNG_VOLUME_ML``: no number is invented.
    """
    if hu.shape != lung_mask.shape:
        raise ValueError(f"hu {hu.shape} and lung_mask {lung_mask.shape} must have the same (z, y, x) shape")
    voxel_ml = math.prod(spacing_mm) / 1000.0
    mask = np.asarray(lung_mask, dtype=bool)
    count = int(np.count_nonzero(mask))
    volume_ml = count * voxel_ml
    if volume_ml < MIN_LUNG_VOLUME_ML:
        raise NoLungFoundError(
            f"expected lungs of at least {MIN_LUNG_VOLUME_ML:.0f} mL, found {volume_ml:.0f} mL of lung; "
            "the series is not reported as analysable for lung density"
        )
    values = np.asarray(hu)[mask]
    if np.issubdtype(values.dtype, np.integer):
        laa, mean, p15 = _histogram_measures(values)
    else:
        laa = 100.0 * float(np.count_nonzero(values < LAA_THRESHOLD_HU)) / count
        mean = float(values.mean(dtype=np.float64))
        p15 = float(np.percentile(values, P15_PERCENTILE))
    return LungDensityMeasures(
        lung_volume_ml=volume_ml, laa950_percent=laa, mean_lung_density_hu=mean, p15_hu=p15, voxel_count=count
    )


def _histogram_measures(values: npt.NDArray[np.generic]) -> tuple[float, float, float]:
    """LAA-950 %, mean and P15 of integer HU values via one histogram; P15 equals ``np.percentile(values, 15)``."""
    lowest = int(values.min())
    counts = np.bincount((values.astype(np.int64) - lowest).ravel())
    levels = np.arange(lowest, lowest + counts.size, dtype=np.float64)
    n = int(values.size)
    below = max(min(LAA_THRESHOLD_HU - lowest, counts.size), 0)
    laa = 100.0 * float(counts[:below].sum()) / n
    mean = float(np.dot(counts, levels)) / n
    cumulative = np.cumsum(counts)
    position = (n - 1) * P15_PERCENTILE / 100.0
    rank = math.floor(position)
    low_value = levels[np.searchsorted(cumulative, rank, side="right")]
    high_value = levels[np.searchsorted(cumulative, min(rank + 1, n - 1), side="right")]
    p15 = float(low_value + (position - rank) * (high_value - low_value))
    return laa, mean, p15


# --------------------------------------------------------------------------------------------------------------------
# Key image
# --------------------------------------------------------------------------------------------------------------------


def key_image_slice(
    lung_mask: BoolVolume, hu: npt.NDArray[np.generic] | None = None, laa_threshold: float = LAA_THRESHOLD_HU
) -> int:
    """Index along z of the most informative axial slice.

    Without ``hu``: the slice with the largest lung area. With ``hu`` (same ``(z, y, x)`` shape): the slice with the
    most lung voxels below ``laa_threshold`` HU, where the low attenuation is, falling back to the largest lung area
    when there is none.
    """
    areas = np.count_nonzero(lung_mask, axis=(1, 2))
    if areas.size == 0 or int(areas.max()) == 0:
        raise NoLungFoundError("expected a lung mask with at least one lung voxel, found an empty mask")
    if hu is not None:
        laa = np.count_nonzero(np.asarray(lung_mask, dtype=bool) & (np.asarray(hu) < laa_threshold), axis=(1, 2))
        if int(laa.max()) > 0:
            return int(np.argmax(laa))
    return int(np.argmax(areas))


def render_key_image(
    hu_slice: npt.NDArray[np.generic],
    mask_slice: npt.NDArray[np.bool_],
    laa_threshold: float | None = LAA_THRESHOLD_HU,
    max_bytes: int = KEY_IMAGE_MAX_BYTES,
    outline_legend: str = "lung outline",
) -> bytes:
    """A PNG of one axial slice ``(y, x)`` (rows, columns), one image pixel per CT pixel, for a clinician's eyes.

    Lung window (W1500/L-600) grayscale; the outline of ``mask_slice`` in cyan (``outline_legend`` names it); mask
    voxels below ``laa_threshold`` HU tinted amber (None: no tint); ``KEY_IMAGE_LABEL`` burned in at the top left
    and a legend (window, colours) at the bottom left, over the air around the patient. An 8-bit indexed PNG,
    normally ``columns x rows`` pixels; should it still exceed ``max_bytes`` (very large matrices), it is scaled down
    until it fits.
    """
    if hu_slice.shape != mask_slice.shape or hu_slice.ndim != 2:
        raise ValueError(f"hu_slice {hu_slice.shape} and mask_slice {mask_slice.shape} must be one (y, x) shape")
    low = LUNG_WINDOW_LEVEL_HU - LUNG_WINDOW_WIDTH_HU / 2.0
    hu = np.asarray(hu_slice, dtype=np.float32)
    gray = np.clip((hu - low) / np.float32(LUNG_WINDOW_WIDTH_HU), 0.0, 1.0)
    index = np.rint(gray * (_GRAY_LEVELS - 1)).astype(np.uint8)
    mask = np.asarray(mask_slice, dtype=bool)
    if laa_threshold is not None:
        laa = mask & (hu < laa_threshold)
        index[laa] = _GRAY_LEVELS + np.rint(gray[laa] * (_TINT_LEVELS - 1)).astype(np.uint8)
    outline = mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)
    index[outline] = _OUTLINE_INDEX
    legend = f"Lung window W{LUNG_WINDOW_WIDTH_HU:g} L{LUNG_WINDOW_LEVEL_HU:g} | cyan: {outline_legend}"
    if laa_threshold is not None:
        legend += f" | amber: below {laa_threshold:g} HU"
    _burn_label(index, KEY_IMAGE_LABEL, top=True)
    _burn_label(index, legend, top=False)
    image = Image.fromarray(index, mode="P")
    image.putpalette(_key_image_palette())
    png = _png(image)
    while len(png) > max_bytes and min(image.size) > 64:
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.NEAREST)
        png = _png(image)
    return png


def _key_image_palette() -> list[int]:
    """The indexed image's colours as a flat [r, g, b, r, g, b, ...] list (see ``_GRAY_LEVELS`` and after)."""
    colours: list[tuple[float, float, float]] = []
    for i in range(_GRAY_LEVELS):
        g = 255.0 * i / (_GRAY_LEVELS - 1)
        colours.append((g, g, g))
    for i in range(_TINT_LEVELS):
        g = 255.0 * i / (_TINT_LEVELS - 1)
        r, gr, b = ((1.0 - LAA_TINT_ALPHA) * g + LAA_TINT_ALPHA * c for c in LAA_TINT_RGB)
        colours.append((r, gr, b))
    colours.append(OUTLINE_RGB)
    for step in range(_LABEL_STEPS + 1):
        t = step / _LABEL_STEPS
        r, gr, b = ((1.0 - t) * k + t * w for k, w in zip(_LABEL_BACKGROUND_RGB, _LABEL_TEXT_RGB, strict=True))
        colours.append((r, gr, b))
    return [round(channel) for colour in colours for channel in colour]


def _burn_label(index: npt.NDArray[np.uint8], text: str, top: bool) -> None:
    """Write ``text`` in white on a dark box into the indexed image, at its top or bottom left corner."""
    rows, columns = index.shape
    size = max(8, round(columns / 36))
    font = ImageFont.load_default(size=size)
    left, upper, right, lower = font.getbbox(text)
    while right - left > columns - 4 and size > 6:  # small matrices: a smaller font, so the label stays whole
        size -= 1
        font = ImageFont.load_default(size=size)
        left, upper, right, lower = font.getbbox(text)
    pad = max(2, size // 4)
    width, height = min(columns, right - left + 2 * pad), min(rows, lower - upper + 2 * pad)
    text_mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(text_mask).text((pad - left, pad - upper), text, fill=255, font=font)
    steps = np.rint(np.asarray(text_mask, dtype=np.float32) * (_LABEL_STEPS / 255.0)).astype(np.uint8)
    y0 = 0 if top else rows - height
    index[y0 : y0 + height, :width] = _LABEL_BACKGROUND_INDEX + steps


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
