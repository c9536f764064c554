"""From a stitched CAD output to findings: regions, centres, lung restriction, suppression, sizing on the CT."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.analysis.nodules import Nodule, find_nodules, measure_diameter, suppress_neighbours
from imaging_cds.inference.manifest import DetectionSpec, load_manifest
from imaging_cds.inference.windows import ResampledGrid, ResampledOutput

REPO = Path(__file__).resolve().parents[2]
SHAPE = (40, 50, 60)


@pytest.fixture(scope="module")
def detection() -> DetectionSpec:
    spec = load_manifest(REPO / "triton_repo" / "lung-nodule-cad").detection
    assert spec is not None
    return replace(spec, report_threshold=0.5, min_separation_mm=10.0, max_findings=10)


def _grid() -> ResampledGrid:
    """2 mm voxels; resampled voxel k of z is source slice 2k (1 mm slices), origin (-50, -60, -100) mm."""
    return ResampledGrid(
        shape=SHAPE,
        spacing_mm=(2.0, 2.0, 2.0),
        start_index=(0.0, 0.0, 0.0),
        step_index=(2.0, 2.0, 2.0),
        source_spacing_mm=(1.0, 1.0, 1.0),
        origin_lps_mm=(-50.0, -60.0, -100.0),
        direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    )


def _blob(output: np.ndarray, centre: tuple[int, int, int], radius: int, peak: float, diameter_mm: float) -> None:
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    probability = np.clip(peak - 0.1 * distance, 0.0, None) * (distance <= radius)
    output[0] = np.maximum(output[0], np.rint(probability * 250).astype(np.uint8))
    output[1][distance <= radius] = round(diameter_mm * 4)


def _result(output: np.ndarray) -> ResampledOutput:
    return ResampledOutput(output=output, hu=np.full(SHAPE, -850, np.int16), grid=_grid(), windows=1)


def test_each_region_is_one_finding_at_its_peak_sorted_by_probability(detection: DetectionSpec) -> None:
    output = np.zeros((2, *SHAPE), dtype=np.uint8)
    _blob(output, (10, 20, 30), 3, 0.8, 8.0)
    _blob(output, (30, 30, 15), 4, 0.97, 12.0)
    _blob(output, (20, 40, 50), 2, 0.45, 6.0)  # below the reporting threshold
    output[0][5, 5, 5] = 200  # a single voxel above it: a region too
    sop_uids = tuple(f"sop{k}" for k in range(80))

    found = find_nodules(_result(output), detection, sop_uids)

    assert [round(n.probability, 2) for n in found] == [0.97, 0.8, 0.8]
    first, second = found[0], found[1]
    assert first.centre_lps_mm == pytest.approx((-50.0 + 30.0, -60.0 + 60.0, -100.0 + 60.0))
    assert first.diameter_mm == pytest.approx(12.0)
    assert (first.slice_index, first.sop_uid) == (60, "sop60")
    assert first.centre_index_zyx == pytest.approx((60.0, 60.0, 30.0))
    assert second.centre_lps_mm == pytest.approx((-50.0 + 60.0, -60.0 + 40.0, -100.0 + 20.0))


def test_findings_outside_the_lungs_are_dropped(detection: DetectionSpec) -> None:
    output = np.zeros((2, *SHAPE), dtype=np.uint8)
    _blob(output, (10, 20, 30), 3, 0.9, 8.0)
    _blob(output, (30, 30, 15), 3, 0.9, 8.0)
    lungs = np.zeros(SHAPE, dtype=bool)
    lungs[:20] = True

    found = find_nodules(_result(output), detection, (), lungs)

    assert len(found) == 1 and found[0].centre_index_zyx[0] == pytest.approx(20.0)


def test_a_saturated_plateau_is_centred_not_cornered(detection: DetectionSpec) -> None:
    output = np.zeros((2, *SHAPE), dtype=np.uint8)
    output[0][10:15, 20:27, 30:33] = 250  # a flat box of probability 1: its centre is (12, 23, 31)
    output[1][10:15, 20:27, 30:33] = 40

    (only,) = find_nodules(_result(output), detection, ())

    assert only.centre_index_zyx == pytest.approx((24.0, 46.0, 62.0))


def _nodule(x: float, probability: float, diameter: float = 6.0) -> Nodule:
    return Nodule((x, 0.0, 0.0), diameter, probability, 0, "", (0.0, 0.0, 0.0))


def test_suppression_keeps_the_most_probable_of_close_findings() -> None:
    candidates = [_nodule(0.0, 0.6), _nodule(8.0, 0.9), _nodule(25.0, 0.7), _nodule(60.0, 0.8, diameter=40.0)]

    kept = suppress_neighbours(candidates, min_separation_mm=10.0, max_findings=10)

    assert [n.probability for n in kept] == [0.9, 0.8, 0.7]  # 0.6 is 8 mm from 0.9
    assert suppress_neighbours(candidates, 10.0, max_findings=2) == kept[:2]
    # 0.7 lies 35 mm from the 40 mm finding's centre: outside its 20 mm radius, so it stays
    assert _nodule(25.0, 0.7) in kept


@pytest.mark.parametrize("diameter_mm", [5.0, 9.0, 16.0])
def test_diameter_is_measured_on_the_ct(diameter_mm: float) -> None:
    spacing = (1.25, 0.7, 0.7)
    shape = (60, 90, 90)
    centre = (30.3, 44.6, 45.2)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    distance = np.sqrt(
        ((zz - centre[0]) * spacing[0]) ** 2
        + ((yy - centre[1]) * spacing[1]) ** 2
        + ((xx - centre[2]) * spacing[2]) ** 2
    )
    weight = np.clip((diameter_mm / 2.0 - distance) / 0.7 + 0.5, 0.0, 1.0)
    hu = np.rint(-850.0 * (1.0 - weight) + 40.0 * weight).astype(np.int16)
    vessel = (np.abs(yy - 44.6) * 0.7 < 1.5) & (np.abs(zz - 30.3) * 1.25 < 1.5)  # a 3 mm vessel through it
    leaky = np.where(vessel, np.int16(40), hu)

    measured = measure_diameter(hu, spacing, centre, estimate_mm=0.7 * diameter_mm)
    with_vessel = measure_diameter(leaky, spacing, centre, estimate_mm=diameter_mm)

    assert measured == pytest.approx(diameter_mm, rel=0.1)
    # an attached vessel adds its length inside the limiting sphere: a small nodule reads up to ~30 % larger
    assert with_vessel is None or with_vessel == pytest.approx(diameter_mm, rel=0.3)
    assert measure_diameter(np.full(shape, -850, np.int16), spacing, centre, diameter_mm) is None
    assert math.isfinite(measured or 0.0)
