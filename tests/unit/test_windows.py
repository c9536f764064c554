"""Sliding-window inference: resampling geometry, tiling, and stitching that writes every voxel exactly once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import ModelManifest, Preprocessing, SlidingWindow, load_manifest
from imaging_cds.inference.windows import infer_volume, plan_axis, resample, run_windows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> ModelManifest:
    return load_manifest(REPO / "triton_repo" / "lung-nodule-cad")


class EchoBackend:
    """Returns, per window, the input (channel 0) and each voxel's distance to the window's nearest face (1)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = 0) -> np.ndarray:
        assert len(batch) <= model.max_batch
        self.batches.append(batch.shape)
        _, d, h, w = batch.shape
        zz, yy, xx = np.ogrid[:d, :h, :w]
        edge = np.minimum.reduce(
            [np.broadcast_to(a, (d, h, w)) for a in (zz, d - 1 - zz, yy, h - 1 - yy, xx, w - 1 - xx)]
        )
        return np.stack([batch.astype(np.int32), np.broadcast_to(edge, batch.shape).astype(np.int32)], axis=1)

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        return "1"

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("n", "size", "overlap", "multiple"), [(137, 96, 32, 4), (500, 96, 32, 4), (90, 96, 32, 4)])
def test_axis_plan_covers_every_voxel_once_with_the_overlap(n: int, size: int, overlap: int, multiple: int) -> None:
    plan = plan_axis(n, size, overlap, multiple)

    assert plan.length <= size and plan.length % multiple == 0
    assert plan.keep[0][0] == 0 and plan.keep[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(plan.keep, plan.keep[1:], strict=False))
    for start, (begin, end) in zip(plan.starts, plan.keep, strict=True):
        assert start <= begin < end <= start + plan.length
    for left, right in zip(plan.starts, plan.starts[1:], strict=False):
        assert left + plan.length - right >= overlap


def test_stitching_writes_each_voxel_once_from_the_centre_of_a_window(model: ModelManifest) -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 400, size=(150, 70, 230), dtype=np.int16)
    window = SlidingWindow(size=(64, 64, 96), overlap=(16, 16, 32), multiple_of=4)
    backend = EchoBackend()

    output, windows = run_windows(hu, model, window, backend)

    assert output.shape == (2, *hu.shape)
    assert np.array_equal(output[0], hu), "every voxel comes back from exactly the window that kept it"
    interior = output[1][8:-8, 8:-8, 16:-16]
    assert interior.min() >= 8, "a kept voxel has at least half the overlap of context on every side"
    assert windows == 3 * 2 * 4 and sum(b[0] for b in backend.batches) == windows
    assert {b[1:] for b in backend.batches} == {(64, 44, 84)}  # as few windows as fit, of one shape


def test_resampled_grid_maps_voxels_back_to_patient_coordinates(model: ModelManifest) -> None:
    hu = np.full((81, 100, 120), -1000, dtype=np.int16)
    hu[:, 30:70, 20:100] = 40  # the "body": rows 30-69, columns 20-99
    volume = CtVolume("1.2.3", "1.2.3.4", hu, (1.25, 0.7, 0.7), (-40.0, -30.0, -200.0), ("x",) * 81)
    assert model.preprocessing is not None

    resampled, grid = resample(volume, model.preprocessing)

    assert resampled.shape == grid.shape and resampled.dtype == np.int16
    assert grid.spacing_mm == pytest.approx((2.0, 2.0, 2.0), abs=0.05)
    rows_from, columns_from = grid.start_index[1], grid.start_index[2]
    assert 0 <= rows_from <= 30 - 10 / 0.7 + 1 and 0 <= columns_from <= 20 - 10 / 0.7 + 1
    assert grid.lps_mm((0.0, 0.0, 0.0)) == pytest.approx((-40.0 + columns_from * 0.7, -30.0 + rows_from * 0.7, -200.0))
    last = tuple(float(n - 1) for n in grid.shape)
    assert grid.lps_mm(last)[2] == pytest.approx(-200.0 + 80 * 1.25)
    assert grid.source_index(last)[0] == pytest.approx(80.0)
    body = resampled > -500
    assert body.any(axis=(0, 2)).sum() * grid.spacing_mm[1] == pytest.approx(40 * 0.7, abs=2.5)


def test_a_model_without_preprocessing_is_not_run_on_a_volume(model: ModelManifest) -> None:
    volume = CtVolume("1.2.3", "1.2.3.4", np.zeros((4, 8, 8), np.int16), (1.0, 1.0, 1.0), (0, 0, 0), ("x",) * 4)
    with pytest.raises(NotAnalyzableError, match=r"study 1\.2\.3: "):
        infer_volume(volume, replace(model, preprocessing=None), EchoBackend())


def test_manifest_declares_the_window_and_spacing(model: ModelManifest) -> None:
    assert model.preprocessing == Preprocessing(
        spacing_mm=(2.0, 2.0, 2.0),
        window=SlidingWindow(size=(96, 192, 192), overlap=(32, 32, 32), multiple_of=4),
        interpolation="linear",
        hu_window=(-1000.0, -400.0),
        crop_to_body_hu=-500.0,
    )


def test_tiled_output_equals_one_pass_over_the_volume(model: ModelManifest) -> None:
    """The 16 voxels of context each kept voxel has cover the model's reach (3 sigma of its 9 mm Gaussian), and
    windows start on its 4 mm pyramid grid: stitching changes no probability, a diameter by at most 0.25 mm."""
    rng = np.random.default_rng(1)
    shape = (160, 64, 64)
    hu = -850.0 + 20.0 * rng.standard_normal(shape)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(12):
        c, r = rng.uniform([5, 5, 5], [155, 59, 59]), rng.uniform(1.5, 7.0)
        hu[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r] = 40.0
    hu[:, ((yy[0] - 40) ** 2 + (xx[0] - 20) ** 2) <= 4] = 40.0  # a vessel along z
    backend = LocalOnnxBackend(threads=2)

    whole, one = run_windows(hu.astype(np.int16), model, SlidingWindow((160, 64, 64), (0, 0, 0), 4), backend)
    tiled, four = run_windows(hu.astype(np.int16), model, SlidingWindow((64, 64, 64), (32, 32, 32), 4), backend)

    assert (one, four) == (1, 4)
    assert np.array_equal(whole[0], tiled[0])
    assert np.abs(whole[1].astype(int) - tiled[1].astype(int)).max() <= 1
