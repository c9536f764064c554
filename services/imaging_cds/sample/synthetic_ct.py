"""A synthetic chest CT with known ground truth, written as a DICOM CT Image Storage series.

The phantom exists so that the whole pipeline (DICOMweb, quality checks, de-identification, inference, measurements,
FHIR) can be run and tested end to end without any patient data. It is drawn from simple analytic shapes, not from
any real scan, and it is deterministic for a seed.

Conventions
-----------
- Arrays are indexed ``(z, y, x)``: ``z`` is the axial slice index, ``y`` the image row, ``x`` the image column.
- Slice 0 is the most superior slice (the neck end) and is written as InstanceNumber 1; z positions decrease with
  the slice index. Rows run anterior -> posterior (+y in LPS), columns run patient right -> patient left (+x in LPS).
- Spacing is ``(z, y, x)`` in mm. Pixel values are Hounsfield units (HU).
- The chest always spans ``CHEST_LENGTH_MM`` (273.75 mm) along z. The default 220 slices sample it every 1.25 mm
  (slice thickness = spacing between slices = 1.25 mm); a phantom with fewer slices (for fast tests) is the same
  chest sampled with proportionally thicker slices, so its lung volume stays about the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from imaging_cds.imaging.slices import CtSlice
from imaging_cds.imaging.volume import CtVolume, assemble_volume

__all__ = [
    "CHEST_LENGTH_MM",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "LUNG_LABELS",
    "PIXEL_SPACING_MM",
    "SLICE_SPACING_MM",
    "Label",
    "NoduleKind",
    "Phantom",
    "PlacedNodule",
    "SampleStudy",
    "ground_truth",
    "image_position_lps",
    "make_chest_ct",
    "make_chest_phantom",
    "write_sample_study",
]

GENERATOR_NAME = "imaging-cds synthetic chest CT"
GENERATOR_VERSION = "1.0.0"

ROWS = 512
COLUMNS = 512
PIXEL_SPACING_MM = 0.703125  # a 360 mm field of view over 512 pixels
SLICE_SPACING_MM = 1.25  # slice thickness == spacing between slices
DEFAULT_SLICES = 220
MIN_SLICES = 32
CHEST_LENGTH_MM = (DEFAULT_SLICES - 1) * SLICE_SPACING_MM  # anatomical z extent, neck to upper abdomen

RESCALE_INTERCEPT = -1024
HU_MIN = -1024
HU_MAX = 3071  # 12 stored bits: stored = HU + 1024 in [0, 4095]

FIRST_SLICE_Z_MM = -30.0  # ImagePositionPatient z of slice 0 (LPS); z decreases towards the feet


class Label(IntEnum):
    """Tissue labels of the phantom (the ``labels`` array of :func:`make_chest_ct`)."""

    OUTSIDE = 0  # air around the patient
    SOFT_TISSUE = 1  # muscle, fat, mediastinum, heart, abdomen
    BONE = 2
    LUNG_PARENCHYMA = 3
    LUNG_VESSEL = 4  # pulmonary vessels inside the lungs
    EMPHYSEMA = 5  # low-attenuation regions inside the lungs
    AIRWAY = 6  # lumen of the trachea and main bronchi outside the lungs
    BOWEL_GAS = 7  # the gastric air bubble under the left hemidiaphragm
    NODULE = 8  # pulmonary nodules, always wholly inside the lung (see PlacedNodule)


LUNG_LABELS: tuple[int, ...] = (Label.LUNG_PARENCHYMA, Label.LUNG_VESSEL, Label.EMPHYSEMA, Label.NODULE)
"""Labels that make up the lung for every ground-truth measurement.

Nodules count as lung: they are placed at least ``NODULE_MARGIN_MM`` from anything that is not lung, so in every
slice they are enclosed by lung, and ``extract_lungs`` (which fills in-plane holes, like the vessels) measures them as
lung too."""

Int16Volume = npt.NDArray[np.int16]
UInt8Volume = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]


# --------------------------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    """Seed-dependent shape parameters; lengths in anatomical mm, ``_z`` values along the anatomical z axis."""

    body_scale: float
    fat_mm: float
    mediastinum_shift_mm: float  # the midline of the mediastinum, towards patient left
    apex_z: tuple[float, float]  # (right, left) top of each lung
    dome_z: tuple[float, float]  # (right, left) top of each hemidiaphragm
    carina_z: float
    trachea_radius_mm: float
    emphysema_fraction: float  # target emphysema volume / lung volume


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    dome_right = 0.69 * CHEST_LENGTH_MM + rng.uniform(-6.0, 6.0)
    apex_right = 0.055 * CHEST_LENGTH_MM + rng.uniform(-3.0, 3.0)
    return _Anatomy(
        body_scale=float(rng.uniform(0.94, 1.04)),
        fat_mm=float(rng.uniform(8.0, 20.0)),
        mediastinum_shift_mm=float(rng.uniform(2.0, 7.0)),
        apex_z=(apex_right, apex_right + float(rng.uniform(1.0, 5.0))),
        dome_z=(dome_right, dome_right + float(rng.uniform(6.0, 14.0))),
        carina_z=0.36 * CHEST_LENGTH_MM + float(rng.uniform(-5.0, 5.0)),
        trachea_radius_mm=float(rng.uniform(8.0, 9.5)),
        emphysema_fraction=float(rng.uniform(0.02, 0.15)),
    )


@dataclass(frozen=True)
class _Frame:
    """Where the chest sits in-plane (mm, LPS, relative to the image centre) for a given scale."""

    cavity_ax: float  # thoracic cavity semi-axis along x at full chest width
    cavity_by: float
    cavity_y: float
    spine_y: float  # vertebral body centre
    spine_r: float
    trachea_y: float
    lung_x: float  # |x| of each lung's centre line


def _frame(anatomy: _Anatomy) -> _Frame:
    s = anatomy.body_scale
    return _Frame(
        cavity_ax=137.0 * s,
        cavity_by=88.0 * s,
        cavity_y=-5.0 * s,
        spine_y=64.0 * s,
        spine_r=16.0 * s,
        trachea_y=26.0 * s,
        lung_x=60.0 * s,
    )


def _smoothstep(edge0: float, edge1: float, x: float) -> float:
    u = min(max((x - edge0) / (edge1 - edge0), 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


class _Plane:
    """In-plane coordinates in mm (x: columns, y: rows), as broadcastable row/column vectors."""

    def __init__(self) -> None:
        centre = (np.arange(COLUMNS, dtype=np.float32) - (COLUMNS - 1) / 2.0) * PIXEL_SPACING_MM
        self.x: FloatArray = centre[None, :]
        self.y: FloatArray = ((np.arange(ROWS, dtype=np.float32) - (ROWS - 1) / 2.0) * PIXEL_SPACING_MM)[:, None]

    def ellipse(self, cx: float, cy: float, ax: float, by: float) -> BoolArray:
        if ax <= 0.0 or by <= 0.0:
            return np.zeros((ROWS, COLUMNS), dtype=bool)
        u = ((self.x - cx) / ax) ** 2
        v = ((self.y - cy) / by) ** 2
        return np.asarray((u + v) <= 1.0)

    def ellipse_radius2(self, cx: float, cy: float, ax: float, by: float) -> FloatArray:
        """Squared normalised radius of every pixel with respect to an ellipse."""
        u = ((self.x - cx) / ax) ** 2
        v = ((self.y - cy) / by) ** 2
        return np.asarray(u + v, dtype=np.float32)


@dataclass
class _SliceOut:
    labels: UInt8Volume
    hu: FloatArray


def _heart_scale(z: float) -> float:
    u = (z / CHEST_LENGTH_MM - 0.41) / (0.93 - 0.41)
    if u <= 0.0 or u >= 1.0:
        return 0.0
    return float(math.sin(math.pi * u) ** 0.6)


def _dome_z(plane: _Plane, frame: _Frame, anatomy: _Anatomy, side: int) -> FloatArray:
    """Height (anatomical z) of one hemidiaphragm at every pixel; lung lies above (smaller z).

    Highest at the dome centre, lower towards the periphery (costophrenic recesses), lowest posteriorly.
    """
    sign = -1.0 if side == 0 else 1.0
    cy = frame.cavity_y - 0.1 * frame.cavity_by
    rho2 = plane.ellipse_radius2(sign * frame.lung_x, cy, 0.55 * frame.cavity_ax, 0.9 * frame.cavity_by)
    posterior = np.clip((plane.y - cy) / frame.cavity_by, 0.0, 1.0)
    return np.asarray(anatomy.dome_z[side] + 38.0 * rho2 + 22.0 * posterior, dtype=np.float32)


def _mediastinum_half_width(y: FloatArray, frame: _Frame, scale: float) -> FloatArray:
    """Half-width (mm) of the mediastinum at each row: narrow anteriorly, widest at the trachea and great vessels."""
    return np.asarray(scale * (11.0 + 11.0 * np.exp(-(((y - frame.trachea_y) / 50.0) ** 2))), dtype=np.float32)


def _draw_slice(z: float, plane: _Plane, frame: _Frame, anatomy: _Anatomy, domes: list[FloatArray]) -> _SliceOut:
    """Labels and noise-free HU of one axial slice at anatomical height ``z``."""
    s_chest = _smoothstep(0.0, 0.17 * CHEST_LENGTH_MM, z)  # 0 in the neck, 1 in the chest
    scale = anatomy.body_scale
    body_ax = (65.0 + 95.0 * s_chest) * scale
    body_by = (72.0 + 46.0 * s_chest) * scale
    body_y = (30.0 - 25.0 * s_chest) * scale
    fat = anatomy.fat_mm * (0.5 + 0.5 * s_chest)

    labels = np.zeros((ROWS, COLUMNS), dtype=np.uint8)
    hu = np.full((ROWS, COLUMNS), -1000.0, dtype=np.float32)

    body = plane.ellipse(0.0, body_y, body_ax, body_by)
    labels[body] = Label.SOFT_TISSUE
    hu[body] = -100.0  # subcutaneous fat
    muscle = plane.ellipse(0.0, body_y, body_ax - fat, body_by - 0.8 * fat)
    hu[muscle] = 45.0

    cavity_ax = body_ax - fat - 9.0
    cavity_by = body_by - 0.8 * fat - 18.0
    cavity_y = body_y - 10.0 * scale
    cavity = plane.ellipse(0.0, cavity_y, cavity_ax, cavity_by)
    hu[cavity] = 38.0

    # ribs: a segmented bony ring around the cavity, sloping down anteriorly
    if 18.0 < z < 0.86 * CHEST_LENGTH_MM:
        ring = plane.ellipse(0.0, cavity_y, cavity_ax + 7.0, cavity_by + 7.0) & ~cavity
        sin_theta = np.clip((plane.y - cavity_y) / (cavity_by + 7.0), -1.0, 1.0)
        phase = (z - 26.0 * (1.0 - sin_theta)) / 24.0
        rib = ring & ((phase - np.floor(phase)) < 0.38) & ~((np.abs(plane.x) < 28.0) & (plane.y < cavity_y))
        labels[rib] = Label.BONE
        hu[rib] = 520.0
    if 0.12 * CHEST_LENGTH_MM < z < 0.7 * CHEST_LENGTH_MM:
        sternum = (np.abs(plane.x) < 15.0 * scale) & (np.abs(plane.y - (cavity_y - cavity_by - 4.0)) < 5.0)
        sternum &= body
        labels[sternum] = Label.BONE
        hu[sternum] = 420.0

    # spine: vertebral body (cancellous core, cortical rim), posterior arch around the canal, spinous process
    vertebra = plane.ellipse(0.0, frame.spine_y, frame.spine_r, frame.spine_r)
    cortex = vertebra & ~plane.ellipse(0.0, frame.spine_y, frame.spine_r - 1.8, frame.spine_r - 1.8)
    canal_y = frame.spine_y + frame.spine_r + 10.0 * scale
    arch = plane.ellipse(0.0, canal_y, 13.0 * scale, 13.0 * scale)
    canal = plane.ellipse(0.0, canal_y, 7.0 * scale, 7.0 * scale)
    spinous = (np.abs(plane.x) < 4.0) & (plane.y > canal_y) & (plane.y < canal_y + 30.0 * scale)
    bone = (vertebra | arch | spinous) & body
    labels[bone] = Label.BONE
    hu[vertebra] = 300.0
    hu[cortex | (arch & ~canal) | (spinous & body)] = 680.0
    labels[canal] = Label.SOFT_TISSUE
    hu[canal] = 15.0

    # mediastinal structures that shape the lungs
    xm = anatomy.mediastinum_shift_mm
    exclude = np.abs(plane.x - xm) < _mediastinum_half_width(plane.y, frame, scale)
    exclude |= (np.abs(plane.x) < frame.spine_r + 14.0) & (plane.y > frame.spine_y - frame.spine_r - 6.0)
    if z > 0.27 * CHEST_LENGTH_MM:
        aorta_x, aorta_y = frame.spine_r + 10.0 * scale, frame.spine_y - 14.0 * scale
        hu[plane.ellipse(aorta_x, aorta_y, 12.0 * scale, 12.0 * scale)] = 45.0
        exclude |= plane.ellipse(aorta_x, aorta_y, 15.0 * scale, 15.0 * scale)
    if 0.27 * CHEST_LENGTH_MM < z < 0.46 * CHEST_LENGTH_MM:
        asc_x, asc_y = 12.0 * scale, frame.cavity_y - 0.3 * frame.cavity_by
        hu[plane.ellipse(asc_x, asc_y, 16.0 * scale, 16.0 * scale)] = 45.0
        exclude |= plane.ellipse(asc_x, asc_y, 19.0 * scale, 19.0 * scale)
    heart = _heart_scale(z)
    if heart > 0.0:
        hx, hy = 24.0 * scale + xm, frame.cavity_y - 0.36 * frame.cavity_by
        hax, hby = 0.54 * frame.cavity_ax * heart, 0.6 * frame.cavity_by * heart
        hu[plane.ellipse(hx, hy, hax, hby)] = 40.0
        exclude |= plane.ellipse(hx, hy, hax + 4.0, hby + 4.0)

    # below the diaphragm: liver on the right (slightly denser), stomach on the left
    liver = cavity & (z >= domes[0]) & (plane.x < 25.0)
    hu[liver & ~exclude] = 58.0

    # lungs: cavity minus mediastinum, capped by a dome-shaped apex, cut below by the hemidiaphragm
    apex_span = 0.42 * CHEST_LENGTH_MM
    for side, sign in ((0, -1.0), (1, 1.0)):
        depth = (z - anatomy.apex_z[side]) / (apex_span - anatomy.apex_z[side])
        if depth <= 0.0:
            continue
        radius = 160.0 * scale * min(depth, 1.0) ** 0.72
        cap = plane.ellipse(sign * frame.lung_x, frame.cavity_y + 0.2 * frame.cavity_by, radius, radius)
        lung = cavity & cap & (sign * (plane.x - xm) > 0) & ~exclude & (z < domes[side])
        labels[lung] = Label.LUNG_PARENCHYMA
        anterior = frame.cavity_y - frame.cavity_by
        dependent = np.clip((plane.y - anterior) / (2.0 * frame.cavity_by), 0.0, 1.0)
        base = -868.0 + 48.0 * dependent  # denser posteriorly (dependent lung)
        hu[lung] = np.broadcast_to(base, (ROWS, COLUMNS))[lung]

    # trachea above the carina (lumen and wall), in the mediastinum
    if z < anatomy.carina_z:
        r = anatomy.trachea_radius_mm * scale
        wall = plane.ellipse(0.0, frame.trachea_y, r + 2.5, r + 2.5)
        lumen = plane.ellipse(0.0, frame.trachea_y, r, r)
        hu[wall] = 55.0
        labels[wall] = Label.SOFT_TISSUE
        hu[lumen] = -1000.0
        labels[lumen] = Label.AIRWAY

    # everything outside the body is air, whatever was drawn there
    labels[~body] = Label.OUTSIDE
    hu[~body] = -1000.0
    return _SliceOut(labels=labels, hu=hu)


# --------------------------------------------------------------------------------------------------------------------
# 3D structures: bronchi, vessels, emphysema, gastric bubble
# --------------------------------------------------------------------------------------------------------------------


class _Volume:
    """Voxel-centre coordinates (anatomical mm) of a (z, y, x) volume, with box queries for 3D shapes."""

    def __init__(self, n_slices: int) -> None:
        self.n_slices = n_slices
        self.dz = CHEST_LENGTH_MM / (n_slices - 1)
        self.z = np.arange(n_slices, dtype=np.float32) * np.float32(self.dz)
        plane = _Plane()
        self.y = plane.y[:, 0]
        self.x = plane.x[0, :]

    def box(self, lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]) -> tuple[slice, slice, slice] | None:
        """Index box covering the (z, y, x) mm box [lo, hi]; None if it misses the volume."""
        z0 = max(math.floor(lo[0] / self.dz), 0)
        z1 = min(math.ceil(hi[0] / self.dz) + 1, self.n_slices)
        y0, y1 = (int(v) for v in np.searchsorted(self.y, [lo[1], hi[1]]))
        x0, x1 = (int(v) for v in np.searchsorted(self.x, [lo[2], hi[2]]))
        y1, x1 = min(y1 + 1, ROWS), min(x1 + 1, COLUMNS)
        if z1 <= z0 or y1 <= y0 or x1 <= x0:
            return None
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[FloatArray, FloatArray, FloatArray]:
        return self.z[box[0]][:, None, None], self.y[box[1]][None, :, None], self.x[box[2]][None, None, :]


def _segment_distance(
    vol: _Volume, box: tuple[slice, slice, slice], a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> FloatArray:
    """Distance (mm) from every voxel centre in ``box`` to the segment a-b (points as (z, y, x) mm)."""
    zz, yy, xx = vol.coords(box)
    d = (b - a).astype(np.float32)
    length2 = float(np.dot(d, d)) or 1e-6
    pz, py, px = zz - np.float32(a[0]), yy - np.float32(a[1]), xx - np.float32(a[2])
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / np.float32(length2), 0.0, 1.0)
    dist2 = (pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2
    return np.asarray(np.sqrt(dist2), dtype=np.float32)


def _tube_box(
    vol: _Volume, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], radius: float
) -> tuple[slice, slice, slice] | None:
    return vol.box(np.minimum(a, b) - radius, np.maximum(a, b) + radius)


def _carve_bronchi(
    vol: _Volume, frame: _Frame, anatomy: _Anatomy, labels: UInt8Volume, hu: FloatArray
) -> list[npt.NDArray[np.float64]]:
    """Main bronchi from the carina to each hilum; lumen and wall are drawn only outside the lungs.

    Returns the two hilum points (z, y, x) where the bronchi open into the lungs.
    """
    s = anatomy.body_scale
    carina = np.array([anatomy.carina_z, frame.trachea_y, 0.0])
    xm = anatomy.mediastinum_shift_mm
    ends = [
        carina + np.array([34.0, 8.0 * s, -(22.0 * s - xm) - 14.0 * s]),  # right: shorter, steeper
        carina + np.array([28.0, 8.0 * s, (22.0 * s + xm) + 18.0 * s]),  # left: longer, more horizontal
    ]
    radii = (7.0 * s, 6.0 * s)
    for end, r in zip(ends, radii, strict=True):
        box = _tube_box(vol, carina, end, r + 2.5)
        if box is None:
            continue
        dist = _segment_distance(vol, box, carina, end)
        outside_lung = labels[box] != Label.LUNG_PARENCHYMA
        wall = (dist <= r + 2.0) & outside_lung & (labels[box] != Label.AIRWAY)
        lumen = (dist <= r) & outside_lung
        labels[box][wall] = Label.SOFT_TISSUE
        hu[box][wall] = 55.0
        labels[box][lumen] = Label.AIRWAY
        hu[box][lumen] = -1000.0
    return ends


def _rotate_towards(
    direction: npt.NDArray[np.float64], rng: np.random.Generator, angle: float
) -> npt.NDArray[np.float64]:
    """A unit vector at ``angle`` radians from ``direction``, turned about a random perpendicular axis."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(direction, helper)
    u /= np.linalg.norm(u)
    v = np.cross(direction, u)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    perpendicular = math.cos(phi) * u + math.sin(phi) * v
    out = math.cos(angle) * direction + math.sin(angle) * perpendicular
    return np.asarray(out / np.linalg.norm(out), dtype=np.float64)


def _vessel_segments(
    rng: np.random.Generator, hila: list[npt.NDArray[np.float64]]
) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]]:
    """A branching pulmonary vessel tree per lung: (start, end, radius) segments in anatomical mm."""
    segments: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]] = []

    def grow(
        start: npt.NDArray[np.float64],
        direction: npt.NDArray[np.float64],
        radius: float,
        length: float,
        generation: int,
    ) -> None:
        end = start + direction * length
        segments.append((start, end, radius))
        if generation == 5:
            return
        for _ in range(2):
            child = _rotate_towards(direction, rng, rng.uniform(0.35, 0.7))
            grow(end, child, radius * 0.76, length * rng.uniform(0.72, 0.9), generation + 1)

    for side, hilum in enumerate(hila):
        lateral = -1.0 if side == 0 else 1.0
        root = hilum + np.array([10.0, -10.0, lateral * 8.0])
        # (z, y, x) directions: up, out, down, down-back, down-front, front
        for dz, dy, dx in (
            (-1.0, 0.1, 0.5),
            (0.0, 0.0, 1.0),
            (1.0, 0.2, 0.6),
            (1.0, 0.9, 0.3),
            (0.8, -0.8, 0.4),
            (-0.2, -0.9, 0.6),
        ):
            direction = np.array([dz, dy, dx * lateral])
            direction /= np.linalg.norm(direction)
            direction = _rotate_towards(direction, rng, rng.uniform(0.0, 0.25))
            grow(root, direction, 5.2, rng.uniform(28.0, 36.0), 0)
    return segments


def _draw_vessels(
    vol: _Volume,
    segments: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]],
    labels: UInt8Volume,
) -> FloatArray:
    """Vessel partial-volume weight in [0, 1] (1 inside, soft over one pixel at the wall), limited to the lungs."""
    weight = np.zeros(labels.shape, dtype=np.float32)
    for start, end, radius in segments:
        box = _tube_box(vol, start, end, radius + PIXEL_SPACING_MM)
        if box is None:
            continue
        dist = _segment_distance(vol, box, start, end)
        w = np.clip((radius - dist) / np.float32(PIXEL_SPACING_MM) + 0.5, 0.0, 1.0)
        np.maximum(weight[box], w, out=weight[box])
    weight[labels != Label.LUNG_PARENCHYMA] = 0.0
    labels[weight >= 0.5] = Label.LUNG_VESSEL
    return weight


def _draw_emphysema(
    vol: _Volume, rng: np.random.Generator, anatomy: _Anatomy, labels: UInt8Volume, texture: FloatArray
) -> None:
    """Irregular low-attenuation blobs, mostly in the upper zones, totalling about the anatomy's target fraction."""
    lung = labels == Label.LUNG_PARENCHYMA
    lung_voxels = np.flatnonzero(lung)
    if lung_voxels.size == 0:
        return
    z_of = lung_voxels // (ROWS * COLUMNS)
    upper = lung_voxels[z_of < np.percentile(z_of, 55)]
    voxel_mm3 = vol.dz * PIXEL_SPACING_MM**2
    target_mm3 = anatomy.emphysema_fraction * lung_voxels.size * voxel_mm3
    n_blobs = int(rng.integers(4, 9))
    shares = rng.dirichlet(np.ones(n_blobs))
    for share in shares:
        pool = upper if rng.random() < 0.8 else lung_voxels
        centre_index = np.unravel_index(int(pool[rng.integers(pool.size)]), labels.shape)
        centre = np.array([vol.z[centre_index[0]], vol.y[centre_index[1]], vol.x[centre_index[2]]], dtype=np.float64)
        radius = 1.25 * (3.0 * share * target_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
        box = vol.box(centre - radius * 1.3, centre + radius * 1.3)
        if box is None:
            continue
        zz, yy, xx = vol.coords(box)
        r2 = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) / np.float32(radius**2)
        blob = (r2 + 0.35 * texture[box]) < 1.0
        sub = labels[box]
        sub[blob & (sub == Label.LUNG_PARENCHYMA)] = Label.EMPHYSEMA


def _draw_gastric_bubble(
    vol: _Volume, frame: _Frame, anatomy: _Anatomy, labels: UInt8Volume, hu: FloatArray, left_dome: FloatArray
) -> None:
    """Air in the gastric fundus, kept at least 8 mm below the left hemidiaphragm."""
    centre = np.array([anatomy.dome_z[1] + 24.0, frame.cavity_y - 0.25 * frame.cavity_by, 0.42 * frame.cavity_ax])
    semi = np.array([11.0, 22.0, 26.0])
    box = vol.box(centre - semi, centre + semi)
    if box is None:
        return
    zz, yy, xx = vol.coords(box)
    inside = ((zz - centre[0]) / semi[0]) ** 2 + ((yy - centre[1]) / semi[1]) ** 2 + ((xx - centre[2]) / semi[2]) ** 2
    bubble = (inside <= 1.0) & (zz > left_dome[None, box[1], box[2]] + 8.0)
    bubble &= labels[box] == Label.SOFT_TISSUE
    labels[box][bubble] = Label.BOWEL_GAS
    hu[box][bubble] = -1000.0


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> FloatArray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    white = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(white, sigma=sigma, truncate=2.5)
    std = float(smooth.std()) or 1.0
    return np.asarray(smooth / np.float32(std), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Pulmonary nodules
# --------------------------------------------------------------------------------------------------------------------

NODULE_DIAMETER_MM = (4.0, 25.0)
"""Diameters are drawn log-uniformly in this range (mm)."""
NODULE_MARGIN_MM = 4.0
"""Every voxel within a nodule's radius plus this margin is lung, so a nodule never touches pleura or mediastinum."""
NODULE_SPACING_MM = 10.0
"""Smallest gap between the surfaces of two nodules."""
DEFAULT_NODULES = (1, 3)
"""Without an explicit count, each seed draws this many nodules (inclusive range)."""
_NODULE_TRIES = 400
_SOLID_HU = (20.0, 60.0)
_GROUND_GLASS_HU = (-650.0, -450.0)


class NoduleKind(StrEnum):
    """The attenuation type of a nodule, as in Fleischner and Lung-RADS."""

    SOLID = "solid"
    PART_SOLID = "part-solid"
    GROUND_GLASS = "ground-glass"


_NODULE_KINDS = (NoduleKind.SOLID, NoduleKind.PART_SOLID, NoduleKind.GROUND_GLASS)
_NODULE_KIND_P = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class PlacedNodule:
    """A spherical nodule of the phantom.

    ``centre_lps_mm``: the sphere's centre in DICOM patient coordinates (LPS, mm), in the geometry the written files
    declare (ImagePositionPatient, PixelSpacing, slice positions). ``centre_index_zyx``: the same point in (z, y, x)
    voxel index units of the volume (fractional). ``side``: the lung holding it, ``right`` or ``left`` (patient).
    ``solid_diameter_mm``: diameter of the solid part (equal to the diameter for solid nodules, 0 for ground glass).
    """

    centre_lps_mm: tuple[float, float, float]
    centre_index_zyx: tuple[float, float, float]
    diameter_mm: float
    kind: NoduleKind
    side: str
    solid_diameter_mm: float
    hu: float  # attenuation of the (outer) nodule tissue before noise

    def as_json(self) -> dict[str, Any]:
        return {
            "centre_lps_mm": [round(v, 3) for v in self.centre_lps_mm],
            "centre_index_zyx": [round(v, 3) for v in self.centre_index_zyx],
            "diameter_mm": round(self.diameter_mm, 3),
            "type": str(self.kind),
            "side": self.side,
            "solid_diameter_mm": round(self.solid_diameter_mm, 3),
            "hu": round(self.hu, 1),
            "slice_index": round(self.centre_index_zyx[0]),
        }


def _lps_of(vol: _Volume, centre_zyx_mm: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """LPS position of an anatomical (z, y, x) mm point: x, y are already LPS (image centre at 0); z runs down."""
    return (float(centre_zyx_mm[2]), float(centre_zyx_mm[1]), float(FIRST_SLICE_Z_MM - centre_zyx_mm[0]))


def _draw_nodules(
    vol: _Volume, rng: np.random.Generator, count: int, labels: UInt8Volume, hu: FloatArray
) -> list[PlacedNodule]:
    """Place up to ``count`` spherical nodules wholly inside the lungs; labels and noise-free HU are updated.

    Uses its own random stream, so the anatomy of a seed does not depend on how many nodules it holds. A nodule
    that finds no room after ``_NODULE_TRIES`` candidate centres is left out (very small lungs, many nodules).
    """
    placed: list[PlacedNodule] = []
    centres: list[tuple[npt.NDArray[np.float64], float]] = []
    if count <= 0:
        return placed
    lung_voxels = np.flatnonzero(np.isin(labels[:, ::4, ::4], LUNG_LABELS[:3]))
    if lung_voxels.size == 0:
        return placed
    coarse_shape = labels[:, ::4, ::4].shape
    low, high = NODULE_DIAMETER_MM
    for _ in range(count):
        diameter = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        kind = _NODULE_KINDS[int(rng.choice(len(_NODULE_KINDS), p=_NODULE_KIND_P))]
        radius = diameter / 2.0
        for _ in range(_NODULE_TRIES):
            k, j, i = np.unravel_index(int(lung_voxels[rng.integers(lung_voxels.size)]), coarse_shape)
            centre = np.array(
                [
                    vol.z[k] + rng.uniform(-0.5, 0.5) * vol.dz,
                    vol.y[4 * j] + rng.uniform(-2.0, 2.0) * PIXEL_SPACING_MM,
                    vol.x[4 * i] + rng.uniform(-2.0, 2.0) * PIXEL_SPACING_MM,
                ],
                dtype=np.float64,
            )
            if any(np.linalg.norm(centre - c) < radius + r + NODULE_SPACING_MM for c, r in centres):
                continue
            reach = radius + NODULE_MARGIN_MM
            box = vol.box(centre - reach, centre + reach)
            if box is None:
                continue
            zz, yy, xx = vol.coords(box)
            dist = np.sqrt(
                (zz - np.float32(centre[0])) ** 2
                + (yy - np.float32(centre[1])) ** 2
                + (xx - np.float32(centre[2])) ** 2
            )
            near = dist <= reach
            if near.sum() == 0 or not np.isin(labels[box][near], LUNG_LABELS[:3]).all():
                continue
            if zz.min() > centre[0] - reach or zz.max() < centre[0] + reach:
                continue  # the sphere leaves the volume
            break
        else:
            continue
        if kind == NoduleKind.SOLID:
            outer_hu, solid = float(rng.uniform(*_SOLID_HU)), diameter
        elif kind == NoduleKind.GROUND_GLASS:
            outer_hu, solid = float(rng.uniform(*_GROUND_GLASS_HU)), 0.0
        else:
            outer_hu, solid = float(rng.uniform(*_GROUND_GLASS_HU)), diameter * float(rng.uniform(0.35, 0.6))
        weight = np.clip((np.float32(radius) - dist) / np.float32(PIXEL_SPACING_MM) + 0.5, 0.0, 1.0)
        sub_hu, sub_labels = hu[box], labels[box]
        sub_hu[...] = (1.0 - weight) * sub_hu + weight * np.float32(outer_hu)
        if solid > 0.0 and kind == NoduleKind.PART_SOLID:
            core = np.clip((np.float32(solid / 2.0) - dist) / np.float32(PIXEL_SPACING_MM) + 0.5, 0.0, 1.0)
            sub_hu[...] = (1.0 - core) * sub_hu + core * np.float32(rng.uniform(*_SOLID_HU))
        sub_labels[weight >= 0.5] = Label.NODULE
        centres.append((centre, radius))
        index = (
            float(centre[0] / vol.dz),
            float(centre[1] / PIXEL_SPACING_MM + (ROWS - 1) / 2.0),
            float(centre[2] / PIXEL_SPACING_MM + (COLUMNS - 1) / 2.0),
        )
        placed.append(
            PlacedNodule(
                centre_lps_mm=_lps_of(vol, centre),
                centre_index_zyx=index,
                diameter_mm=diameter,
                kind=kind,
                side="right" if centre[2] < 0.0 else "left",
                solid_diameter_mm=solid,
                hu=outer_hu,
            )
        )
    return placed


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT: ``hu`` int16 (z, y, x), ``labels`` uint8 (:class:`Label`), ``spacing_mm`` (z, y, x) mm,
    and the nodules placed in it."""

    hu: Int16Volume
    labels: UInt8Volume
    spacing_mm: Spacing
    nodules: tuple[PlacedNodule, ...]


def make_chest_ct(
    seed: int = 0, n_slices: int = DEFAULT_SLICES, nodules: int | None = None
) -> tuple[Int16Volume, UInt8Volume, Spacing]:
    """The synthetic chest CT for ``seed``: ``(hu, labels, spacing_mm)``.

    ``hu`` is int16 HU, clipped to [-1024, 3071], shape ``(n_slices, 512, 512)`` in ``(z, y, x)`` order with slice 0
    the most superior; ``labels`` is uint8 with values from :class:`Label`; ``spacing_mm`` is ``(z, y, x)`` in mm.
    Pure and deterministic: the same seed, slice count and nodule count give the same arrays. ``nodules``: how many
    pulmonary nodules to place (None: 1 to 3, drawn from the seed); see :func:`make_chest_phantom` for where they are.
    """
    phantom = make_chest_phantom(seed, n_slices, nodules)
    return phantom.hu, phantom.labels, phantom.spacing_mm


def make_chest_phantom(seed: int = 0, n_slices: int = DEFAULT_SLICES, nodules: int | None = None) -> Phantom:
    """:func:`make_chest_ct` with the list of nodules placed (centre, diameter, type, side).

    Nodules come from a random stream of their own (``default_rng([seed, 1])``): the anatomy, vessels, emphysema and
    noise of a seed are the same whatever the nodule count.
    """
    if nodules is not None and nodules < 0:
        raise ValueError(f"nodules must be 0 or more, got {nodules}")
    if n_slices < MIN_SLICES:
        raise ValueError(f"n_slices must be at least {MIN_SLICES}, got {n_slices}")
    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng)
    frame = _frame(anatomy)
    plane = _Plane()
    vol = _Volume(n_slices)
    domes = [_dome_z(plane, frame, anatomy, side) for side in (0, 1)]

    labels = np.empty((n_slices, ROWS, COLUMNS), dtype=np.uint8)
    hu = np.empty((n_slices, ROWS, COLUMNS), dtype=np.float32)
    for k in range(n_slices):
        drawn = _draw_slice(float(vol.z[k]), plane, frame, anatomy, domes)
        labels[k] = drawn.labels
        hu[k] = drawn.hu

    hila = _carve_bronchi(vol, frame, anatomy, labels, hu)
    _draw_gastric_bubble(vol, frame, anatomy, labels, hu, domes[1])
    vessel_weight = _draw_vessels(vol, _vessel_segments(rng, hila), labels)

    # lung texture: spatially correlated noise, computed only over the lungs' bounding box
    lung_any = np.isin(labels, LUNG_LABELS)
    box = ndimage.find_objects(lung_any.astype(np.uint8))[0]
    texture = np.zeros(labels.shape, dtype=np.float32)
    if box is not None:
        texture[box] = _correlated_noise(rng, lung_any[box].shape, (0.8, 1.6, 1.6))
    _draw_emphysema(vol, rng, anatomy, labels, texture)

    lung = labels == Label.LUNG_PARENCHYMA
    vessel = labels == Label.LUNG_VESSEL
    emphysema = labels == Label.EMPHYSEMA
    in_lung = lung | vessel | emphysema
    hu[in_lung] += 22.0 * texture[in_lung]
    hu[emphysema] = -978.0 + 8.0 * texture[emphysema]
    weight = vessel_weight[in_lung]
    hu[in_lung] = (1.0 - weight) * hu[in_lung] + weight * 40.0

    nodule_rng = np.random.default_rng([seed, 1])
    count = int(nodule_rng.integers(DEFAULT_NODULES[0], DEFAULT_NODULES[1] + 1)) if nodules is None else nodules
    placed = _draw_nodules(vol, nodule_rng, count, labels, hu)

    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(18.0)  # quantum noise, white
    np.clip(np.rint(hu, out=hu), HU_MIN, HU_MAX, out=hu)
    spacing = (float(vol.dz), PIXEL_SPACING_MM, PIXEL_SPACING_MM)
    return Phantom(hu=hu.astype(np.int16), labels=labels, spacing_mm=spacing, nodules=tuple(placed))


def ground_truth(hu: Int16Volume, labels: UInt8Volume, spacing_mm: Spacing) -> dict[str, Any]:
    """Lung measurements of a phantom from its labels and the exact HU values that are written.

    Definitions: lung = :data:`LUNG_LABELS`; LAA-950 = 100 x fraction of lung voxels with HU < -950; MLD = mean lung
    HU; P15 = 15th percentile of lung HU (numpy's default linear interpolation).
    """
    voxel_ml = spacing_mm[0] * spacing_mm[1] * spacing_mm[2] / 1000.0
    lung = np.isin(labels, LUNG_LABELS)
    lung_hu = hu[lung]
    if lung_hu.size == 0:
        raise ValueError("the phantom has no lung voxels")
    n = int(lung_hu.size)
    emphysema_voxels = int(np.count_nonzero(labels == Label.EMPHYSEMA))
    return {
        "lung_voxel_count": n,
        "lung_volume_ml": round(n * voxel_ml, 3),
        "laa950_percent": round(100.0 * float(np.count_nonzero(lung_hu < -950)) / n, 4),
        "mean_lung_density_hu": round(float(lung_hu.mean(dtype=np.float64)), 3),
        "p15_hu": round(float(np.percentile(lung_hu, 15)), 3),
        "emphysema_volume_ml": round(emphysema_voxels * voxel_ml, 3),
        "emphysema_percent_of_lung": round(100.0 * emphysema_voxels / n, 4),
        "vessel_volume_ml": round(int(np.count_nonzero(labels == Label.LUNG_VESSEL)) * voxel_ml, 3),
        "airway_volume_ml": round(int(np.count_nonzero(labels == Label.AIRWAY)) * voxel_ml, 3),
    }


@dataclass(frozen=True)
class SampleStudy:
    """A synthetic study written to disk by :func:`write_sample_study`."""

    study_dir: Path  # the folder holding the DICOM files (``out_dir/dicom``)
    ground_truth_path: Path
    study_instance_uid: str
    series_instance_uid: str
    n_instances: int
    ground_truth: dict[str, Any]


def _uid(seed: int, n_slices: int, *what: str) -> UID:
    """A UID derived from the seed (pydicom's root + a hash), so rewriting a seed reproduces the same study."""
    return generate_uid(entropy_srcs=[GENERATOR_NAME, GENERATOR_VERSION, str(seed), str(n_slices), *what])


def _ds_str(value: float) -> str:
    """A Decimal String value that fits DICOM's 16 characters."""
    return f"{value:.10g}"


def image_position_lps(index: int, spacing_mm: Spacing) -> tuple[float, float, float]:
    """ImagePositionPatient (LPS, mm) of slice ``index``: the centre of its first pixel (row 0, column 0).

    Rows run along +y (posterior) and columns along +x (patient left); z falls by the slice spacing per slice.
    """
    return (
        -(COLUMNS - 1) / 2.0 * spacing_mm[2],
        -(ROWS - 1) / 2.0 * spacing_mm[1],
        FIRST_SLICE_Z_MM - index * spacing_mm[0],
    )


def _instance(
    seed: int, index: int, pixels: Int16Volume, spacing_mm: Spacing, study_uid: UID, series_uid: UID, frame_uid: UID
) -> Dataset:
    n_slices = pixels.shape[0]
    sop_uid = _uid(seed, n_slices, "instance", str(index))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240115"
    ds.StudyTime = "093000"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "093112"
    ds.AccessionNumber = f"SYNACC{seed:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "imaging-cds synthetic phantom"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.SeriesDescription = "Synthetic chest 1.25 mm standard kernel"
    ds.ManufacturerModelName = GENERATOR_NAME
    ds.SoftwareVersions = GENERATOR_VERSION
    ds.PatientName = f"Synthetic^Patient^{seed}"
    ds.PatientID = f"SYN-{seed:05d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds_str(spacing_mm[0])
    ds.SpacingBetweenSlices = _ds_str(spacing_mm[0])
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"  # densitometry thresholds assume a soft/standard kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"SYN{seed}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    position = image_position_lps(index, spacing_mm)
    z = position[2]
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds_str(z)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = [_ds_str(spacing_mm[1]), _ds_str(spacing_mm[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    stored = (pixels[index].astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    ds.add_new(0x7FE00010, "OW", stored.tobytes())
    return ds


def write_sample_study(
    out_dir: Path, seed: int = 0, n_slices: int = DEFAULT_SLICES, nodules: int | None = None
) -> SampleStudy:
    """Write the phantom for ``seed`` as ``out_dir/dicom/IM00001.dcm ...`` plus ``out_dir/ground_truth.json``.

    One CT Image Storage file per axial slice (Explicit VR Little Endian, unsigned 12-bit stored values,
    RescaleIntercept -1024). UIDs are derived from the seed, so rewriting a seed reproduces the same study.
    ``nodules``: how many pulmonary nodules to place (None: 1 to 3, drawn from the seed); ``ground_truth.json`` lists
    them under ``nodules`` (centre in LPS mm, as the files' geometry places it; diameter; type; side).
    """
    phantom = make_chest_phantom(seed, n_slices, nodules)
    hu, labels, spacing = phantom.hu, phantom.labels, phantom.spacing_mm
    study_uid = _uid(seed, n_slices, "study")
    series_uid = _uid(seed, n_slices, "series")
    frame_uid = _uid(seed, n_slices, "frame-of-reference")

    dicom_dir = Path(out_dir) / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    for index in range(n_slices):
        ds = _instance(seed, index, hu, spacing, study_uid, series_uid, frame_uid)
        dcmwrite(dicom_dir / f"IM{index + 1:05d}.dcm", ds, enforce_file_format=True)

    truth: dict[str, Any] = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_slices": n_slices,
        "rows": ROWS,
        "columns": COLUMNS,
        "spacing_mm": list(spacing),
        "study_instance_uid": str(study_uid),
        "series_instance_uid": str(series_uid),
        "lung_definition": "labels parenchyma + vessels + emphysema + nodules; trachea and main bronchi excluded",
        **ground_truth(hu, labels, spacing),
        "nodule_definition": (
            "spheres wholly inside the lung; centre_lps_mm in the DICOM patient frame (LPS, mm), centre_index_zyx "
            "in (slice, row, column) index units; diameter_mm of the whole nodule, solid_diameter_mm of its solid part"
        ),
        "nodules": [n.as_json() for n in phantom.nodules],
    }
    truth_path = Path(out_dir) / "ground_truth.json"
    truth_path.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return SampleStudy(
        study_dir=dicom_dir,
        ground_truth_path=truth_path,
        study_instance_uid=str(study_uid),
        series_instance_uid=str(series_uid),
        n_instances=n_slices,
        ground_truth=truth,
    )


def phantom_volume(phantom: Phantom, study_uid: str, series_uid: str, sop_prefix: str = "sop") -> CtVolume:
    """``phantom`` as the worker would assemble its DICOM series (canonical frame, slice ``k`` the instance
    ``<sop_prefix><k>``), without writing files: for evaluations and tests of volume models."""
    spacing = phantom.spacing_mm
    slices = [
        CtSlice(
            sop_uid=f"{sop_prefix}{k}",
            position_lps_mm=image_position_lps(k, spacing),
            orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing_mm=(spacing[1], spacing[2]),
            hu=phantom.hu[k],
        )
        for k in range(phantom.hu.shape[0])
    ]
    return assemble_volume(study_uid, series_uid, slices, max(3.0, spacing[0]))
