"""The same ONNX files give the same outputs on Triton (gRPC) and in-process onnxruntime: every model in
``triton_repo/``, on batches longer than its max_batch_size, routine and STAT."""

from __future__ import annotations

import numpy as np
import pytest

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.backend import STAT_PRIORITY
from imaging_cds.inference.check import check_repository
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import ModelManifest, load_manifest, load_manifests
from imaging_cds.inference.triton import TritonBackend
from imaging_cds.inference.windows import resample, run_windows
from imaging_cds.sample.synthetic_ct import make_chest_ct

pytestmark = pytest.mark.services

MODELS = load_manifests(DEFAULT_MODEL_REPOSITORY)
_NUMPY = {"INT16": np.int16, "UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "INT32": np.int32}


class _Recorder(LocalOnnxBackend):
    """Keeps every batch the worker's code sends (the windows of a volume model)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[np.ndarray] = []

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = 0) -> np.ndarray:
        self.batches.append(batch.copy())
        return super().infer(model, batch, priority)


def model_input(model: ModelManifest, n_items: int) -> np.ndarray:
    """At least ``n_items`` inputs as the worker sends them, in the model's input datatype: axial slices of a chest
    CT in HU for a slice model; for a volume model (``preprocessing``), the windows the worker cuts from that CT
    after resampling (``imaging_cds.inference.windows``), repeated until there are enough."""
    if model.preprocessing is None:
        hu, _labels, _spacing = make_chest_ct(seed=2, n_slices=max(n_items, 40))
        return np.ascontiguousarray(hu[:n_items].astype(_NUMPY[model.input.datatype]))
    hu, _labels, spacing = make_chest_ct(seed=2)
    volume = CtVolume("1.2.3", "1.2.3.4", hu, spacing, (0.0, 0.0, 0.0), tuple(str(i) for i in range(len(hu))))
    resampled, _grid = resample(volume, model.preprocessing)
    recorder = _Recorder()
    run_windows(resampled, model, model.preprocessing.window, recorder)
    windows = np.concatenate(recorder.batches)
    repeats = -(-n_items // len(windows))
    return np.ascontiguousarray(np.concatenate([windows] * repeats)[:n_items].astype(_NUMPY[model.input.datatype]))


def test_every_committed_model_passes_the_check() -> None:
    assert MODELS
    assert [c.problems for c in check_repository(DEFAULT_MODEL_REPOSITORY) if not c.ok] == []


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_model_outputs_are_identical_on_triton_and_locally(sandbox: dict[str, str], model: ModelManifest) -> None:
    batch = model_input(model, model.max_batch + 7)  # two requests on Triton, two runs locally
    triton = TritonBackend(sandbox["IMAGING_CDS_TRITON_GRPC_URL"])
    local = LocalOnnxBackend()
    try:
        assert triton.served_version(model) == model.triton_version
        here = local.infer(model, batch)
        for priority in (0, STAT_PRIORITY):
            remote = triton.infer(model, batch, priority=priority)
            assert remote.dtype == here.dtype
            assert remote.shape == here.shape and remote.shape[0] == len(batch)
            np.testing.assert_array_equal(remote, here)
        assert np.unique(here).size > 1  # the comparison is about real outputs, not a constant
    finally:
        triton.close()


def test_lung_density_masks_are_identical_slab_by_slab(sandbox: dict[str, str]) -> None:
    model = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")
    hu, _labels, _spacing = make_chest_ct(seed=2, n_slices=120)
    triton = TritonBackend(sandbox["IMAGING_CDS_TRITON_GRPC_URL"])
    local = LocalOnnxBackend()
    try:
        for start in (0, 40, 80):
            slab = np.ascontiguousarray(hu[start : start + 40])
            remote, here = triton.infer(model, slab), local.infer(model, slab)
            assert remote.dtype == here.dtype == np.uint8
            assert remote.shape == slab.shape
            np.testing.assert_array_equal(remote, here)
            assert 0 < int(here.sum()) < here.size
    finally:
        triton.close()
