"""The same ONNX file gives the same output on Triton (gRPC) and in-process onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton import TritonBackend
from imaging_cds.sample.synthetic_ct import make_chest_ct

pytestmark = pytest.mark.services


def test_lung_density_model_outputs_are_identical_on_triton_and_locally(sandbox: dict[str, str]) -> None:
    model = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")
    hu, _labels, _spacing = make_chest_ct(seed=2, n_slices=120)
    triton = TritonBackend(sandbox["IMAGING_CDS_TRITON_GRPC_URL"])
    local = LocalOnnxBackend()
    try:
        assert triton.served_version(model) == "1"
        for start in (0, 40, 80):
            slab = np.ascontiguousarray(hu[start : start + 40])
            remote, here = triton.infer(model, slab), local.infer(model, slab)
            assert remote.dtype == here.dtype == np.uint8
            assert remote.shape == slab.shape
            np.testing.assert_array_equal(remote, here)
            assert 0 < int(here.sum()) < here.size  # the comparison is about real lung masks, not all-zero output
    finally:
        triton.close()
