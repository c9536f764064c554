"""The lung-density ONNX model and its post-processing, against synthetic phantoms with known ground truth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from imaging_cds.analysis.lung_density import (
    KEY_IMAGE_MAX_BYTES,
    NoLungFoundError,
    _label_3d,
    extract_lungs,
    key_image_slice,
    lung_box,
    measure_lung_density,
    render_key_image,
)
from imaging_cds.sample.synthetic_ct import LUNG_LABELS, Label, ground_truth, make_chest_ct

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "triton_repo" / "lung-density"
MAX_BATCH = 64  # config.pbtxt max_batch_size


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _candidates(session: ort.InferenceSession, hu: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Run the model the way the worker sends it to Triton: batches of at most MAX_BATCH axial slices."""
    batches = [
        session.run(["lung_candidate"], {"ct_hu": hu[i : i + MAX_BATCH]})[0] for i in range(0, len(hu), MAX_BATCH)
    ]
    return np.concatenate(batches)


def test_build_script_reproduces_the_committed_model(rebuilt_models: Path) -> None:
    rebuilt = rebuilt_models / "lung-density"
    assert (rebuilt / "1" / "model.onnx").read_bytes() == (MODEL_DIR / "1" / "model.onnx").read_bytes()
    assert (rebuilt / "config.pbtxt").read_text() == (MODEL_DIR / "config.pbtxt").read_text()


def test_model_honours_the_worker_contract(session: ort.InferenceSession) -> None:
    model = onnx.load(str(MODEL_DIR / "1" / "model.onnx"))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()

    assert model.opset_import[0].version == 17
    assert model.ir_version <= 10
    assert (inp.name, inp.type) == ("ct_hu", "tensor(int16)")
    assert (out.name, out.type) == ("lung_candidate", "tensor(uint8)")
    assert all(isinstance(d, str) for d in inp.shape) and len(inp.shape) == 3
    hu = np.full((3, 40, 50), -1000, dtype=np.int16)
    hu[:, 10:30, 10:40] = 40
    result = session.run(None, {"ct_hu": hu})[0]
    assert result.shape == hu.shape and result.dtype == np.uint8
    assert result[:, 20, 25].tolist() == [0, 0, 0] and result[:, 2, 2].tolist() == [1, 1, 1]


@settings(max_examples=40, deadline=None)
@given(
    hu=arrays(
        np.int16,
        st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)),
        elements=st.integers(-1024, 3071),
    )
)
def test_each_slice_is_smoothed_in_plane_with_edge_padding_then_thresholded(hu: npt.NDArray[np.int16]) -> None:
    """The graph's 1x3x3 convolution is the 2D 3x3 binomial smoothing of each slice on its own, edges repeated,
    then < -400 HU. Sums of HU times sixteenths are exact in float32, so the comparison is exact too."""
    session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    binomial = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    expected = np.stack([ndimage.convolve(s.astype(np.float64), binomial, mode="nearest") < -400.0 for s in hu])
    np.testing.assert_array_equal(session.run(None, {"ct_hu": hu})[0], expected.astype(np.uint8))


def test_onnxruntime_runs_the_graph_without_a_layout_conversion(tmp_path: Path) -> None:
    """onnxruntime's default optimisation (Triton's too) rewrote the former 2D one-channel convolution into its
    blocked NCHWc layout, 16 channels wide with AVX-512, plus reorders: 2.4 times the time for the same output. The
    optimised graph it would run holds no NCHWc node. (On a CPU without AVX2 the pass never applies.)"""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(str(tmp_path / "optimised.onnx"))
    assert not [n.op_type for n in optimised.graph.node if n.domain == "com.microsoft.nchwc"]


def test_triton_config_declares_the_same_contract() -> None:
    config = (MODEL_DIR / "config.pbtxt").read_text()

    for line in (
        'name: "lung-density"',
        'backend: "onnxruntime"',
        "max_batch_size: 64",
        'name: "ct_hu"',
        "data_type: TYPE_INT16",
        'name: "lung_candidate"',
        "data_type: TYPE_UINT8",
        "dims: [ -1, -1 ]",
        "dynamic_batching {",
        "priority_levels: 2",
        "kind: KIND_CPU",
        "latest: { num_versions: 1 }",
    ):
        assert line in config


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lung_measures_match_ground_truth(session: ort.InferenceSession, seed: int) -> None:
    hu, labels, spacing = make_chest_ct(seed)
    truth = ground_truth(hu, labels, spacing)

    lungs = extract_lungs(_candidates(session, hu), spacing)
    measured = measure_lung_density(hu, lungs, spacing)

    assert measured.lung_volume_ml == pytest.approx(truth["lung_volume_ml"], rel=0.03)
    assert measured.laa950_percent == pytest.approx(truth["laa950_percent"], abs=1.0)
    assert measured.mean_lung_density_hu == pytest.approx(truth["mean_lung_density_hu"], abs=15.0)
    assert measured.p15_hu == pytest.approx(truth["p15_hu"], abs=10.0)
    assert not (lungs & (labels == Label.AIRWAY)).sum() > 0.25 * (labels == Label.AIRWAY).sum(), "trachea kept"
    assert not (lungs & (labels == Label.BOWEL_GAS)).any(), "gastric air kept"
    assert not (lungs & (labels == Label.OUTSIDE)).any(), "air around the patient kept"


def test_slice_order_does_not_change_the_lungs(session: ort.InferenceSession) -> None:
    hu, _, spacing = make_chest_ct(4, n_slices=64)
    candidates = _candidates(session, hu)

    head_first = extract_lungs(candidates, spacing)
    feet_first = extract_lungs(candidates[::-1], spacing)[::-1]

    assert np.array_equal(head_first, feet_first)


def _head_phantom() -> npt.NDArray[np.int16]:
    """A head-like volume: brain, skull, a small air-filled sinus; no lungs."""
    z, y, x = np.ogrid[:60, :256, :256]
    r2 = ((y - 128) / 90.0) ** 2 + ((x - 128) / 75.0) ** 2 + ((z - 30) / 40.0) ** 2
    hu = np.full((60, 256, 256), -1000, dtype=np.int16)
    hu[r2 < 1.0] = 900
    hu[r2 < 0.85] = 35
    hu[((y - 60) ** 2 + (x - 128) ** 2 < 64) & (abs(z - 30) < 8)] = -1000
    return hu


@pytest.mark.parametrize("volume", ["head", "soft tissue"])
def test_volume_without_lungs_is_not_measured(session: ort.InferenceSession, volume: str) -> None:
    hu = _head_phantom() if volume == "head" else np.full((40, 128, 128), 40, dtype=np.int16)
    spacing = (2.5, 0.9, 0.9)

    lungs = extract_lungs(_candidates(session, hu), spacing)

    with pytest.raises(NoLungFoundError, match="mL"):
        measure_lung_density(hu, lungs, spacing)


def test_measures_follow_the_standard_definitions() -> None:
    rng = np.random.default_rng(5)
    hu = rng.integers(-1024, -500, size=(20, 64, 64)).astype(np.int16)
    mask = np.zeros(hu.shape, dtype=bool)
    mask[2:18, 5:60, 3:61] = True
    spacing = (10.0, 1.0, 1.0)

    measured = measure_lung_density(hu, mask, spacing)
    as_float = measure_lung_density(hu.astype(np.float32), mask, spacing)

    values = hu[mask]
    assert measured.voxel_count == values.size
    assert measured.lung_volume_ml == pytest.approx(values.size * 10.0 / 1000.0)
    assert measured.laa950_percent == pytest.approx(100.0 * np.mean(values < -950))
    assert measured.mean_lung_density_hu == pytest.approx(values.mean())
    assert measured.p15_hu == pytest.approx(np.percentile(values, 15))
    assert as_float.p15_hu == pytest.approx(measured.p15_hu)


def test_lung_box_is_the_tight_bounding_box_of_the_mask() -> None:
    mask = np.zeros((6, 8, 9), dtype=bool)
    mask[1, 2, 3] = mask[4, 6, 7] = mask[2, 5, 2] = True
    assert lung_box(mask) == (slice(1, 5), slice(2, 7), slice(2, 8))
    assert np.count_nonzero(mask[lung_box(mask)]) == 3
    assert lung_box(np.zeros((2, 3, 4), dtype=bool)) == (slice(None), slice(None), slice(None))


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(1, 9))))
def test_3d_components_are_numbered_as_scipy_numbers_them(mask: npt.NDArray[np.bool_]) -> None:
    # extract_lungs breaks ties between equally large components by their number, so the numbering (raster order of
    # each component's first voxel, face connectivity) must be scipy's, not merely the same partition.
    labels, count = _label_3d(mask)
    expected, expected_count = ndimage.label(mask)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected)


def test_empty_mask_raises_a_named_error() -> None:
    hu = np.zeros((4, 8, 8), dtype=np.int16)
    mask = np.zeros(hu.shape, dtype=bool)

    with pytest.raises(NoLungFoundError):
        measure_lung_density(hu, mask, (1.0, 1.0, 1.0))
    with pytest.raises(NoLungFoundError):
        key_image_slice(mask)


def test_key_image_is_the_largest_lung_slice_as_a_small_labelled_png() -> None:
    hu, labels, _ = make_chest_ct(0, n_slices=40)
    lungs = np.isin(labels, LUNG_LABELS)

    index = key_image_slice(lungs)
    png = render_key_image(hu[index], lungs[index])

    assert index == int(np.argmax(lungs.sum(axis=(1, 2))))
    assert png == render_key_image(hu[index], lungs[index])
    assert len(png) < KEY_IMAGE_MAX_BYTES
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "P" and image.size == (512, 512)
    pixels = np.asarray(image.convert("RGB"))
    # "AI result - not for diagnosis" is burned in, white on a dark box, in the top left corner (air, not lung).
    corner = pixels[:24, :200]
    assert (corner.min(axis=2) > 240).sum() > 150 and (corner.max(axis=2) < 30).sum() > 1500
    assert not lungs[index][:24, :200].any()


def test_the_most_informative_slice_is_where_the_low_attenuation_lung_is() -> None:
    hu, labels, _ = make_chest_ct(0, n_slices=40)
    lungs = np.isin(labels, LUNG_LABELS)
    laa_per_slice = (lungs & (hu < -950)).sum(axis=(1, 2))

    assert key_image_slice(lungs, hu) == int(np.argmax(laa_per_slice))
    assert key_image_slice(lungs, np.zeros_like(hu)) == key_image_slice(lungs)  # no LAA: the largest lung area


def test_a_key_image_over_the_size_limit_is_scaled_down_until_it_fits() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(-1000, 400, size=(1024, 1024)).astype(np.int16)  # incompressible
    png = render_key_image(noise, np.zeros(noise.shape, dtype=bool), max_bytes=300_000)

    image = Image.open(io.BytesIO(png))
    assert len(png) <= 300_000 and image.width < 1024 and image.width == image.height


def test_key_image_tints_low_attenuation_lung() -> None:
    hu, labels, _ = make_chest_ct(0, n_slices=40)
    index = int(np.argmax((labels == Label.EMPHYSEMA).sum(axis=(1, 2))))
    lungs = np.isin(labels[index], LUNG_LABELS)

    pixels = np.asarray(Image.open(io.BytesIO(render_key_image(hu[index], lungs))).convert("RGB"))

    laa = (labels[index] == Label.EMPHYSEMA) & (hu[index] < -950)
    normal = (labels[index] == Label.LUNG_PARENCHYMA) & (hu[index] > -900)
    assert laa.sum() > 100
    assert (pixels[laa][:, 0] > pixels[laa][:, 2] + 50).mean() > 0.9, "LAA voxels are tinted"
    assert (pixels[normal][:, 0] == pixels[normal][:, 2]).mean() > 0.9, "other lung stays gray"
