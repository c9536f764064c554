"""Volume assembly and quality checks on synthetic series: ordering, spacing, rescale, canonical frame, and each
defect caught by its check's name."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.decode import SeriesDecoder
from imaging_cds.imaging.quality import CHECKS, QualityCheckFailed, QualityLimits
from imaging_cds.imaging.slices import CtSlice
from imaging_cds.imaging.volume import CtVolume, VolumeBuilder, assemble_volume
from tests.synthetic_series import SeriesSpec, build_series, chest_like, set_pixels, to_bytes

LIMITS = QualityLimits(min_slices=10, max_slice_spacing_mm=3.0)


def assemble(datasets: list[pydicom.Dataset], limits: QualityLimits = LIMITS, shuffle: bool = True) -> CtVolume:
    """Through the streaming path: Part 10 bytes in arrival order (shuffled, as a PACS may send them)."""
    order = np.random.default_rng(7).permutation(len(datasets)) if shuffle else np.arange(len(datasets))
    builder = VolumeBuilder("1.2.3", "1.2.3.4", len(datasets))
    decoder = SeriesDecoder(builder)
    for i in order:
        decoder.add(to_bytes(datasets[i]))
    decoder.close()
    return builder.finish(limits)


def test_slices_are_ordered_along_the_normal_with_spacing_from_positions_not_thickness() -> None:
    spec = SeriesSpec(n=20, spacing=1.25, slice_thickness=5.0)
    volume = assemble(build_series(spec))
    assert volume.hu.shape == (20, 48, 48) and volume.hu.dtype == np.int16
    assert [int(v) for v in volume.hu[:, 0, 0]] == list(range(20))  # slice i carries i in its corner
    assert volume.spacing_mm == pytest.approx((1.25, 0.7, 0.7))
    assert volume.origin_lps_mm == pytest.approx((-16.45, -16.45, 0.0))
    assert volume.direction == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    assert volume.verdict is not None and volume.verdict.passed
    assert [r.check for r in volume.verdict.results] == list(CHECKS)


def test_rescale_slope_and_intercept_give_hounsfield_units() -> None:
    volume = assemble(build_series(SeriesSpec(n=12, slope=2.0, intercept=-2048.0)))
    np.testing.assert_array_equal(volume.hu[4], chest_like(4, 48, 48))  # even values: exact with slope 2


def test_per_slice_rescale_is_applied_per_slice() -> None:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i % 2:  # same HU stored with another intercept
            stored = np.frombuffer(ds.PixelData, "<u2").astype(np.int32) - 1024 + 3000
            ds.RescaleIntercept = "-3000"
            set_pixels(ds, stored.reshape(48, 48).astype(np.uint16))

    volume = assemble(build_series(SeriesSpec(n=12, edit=edit)))
    for i in range(12):
        np.testing.assert_array_equal(volume.hu[i], chest_like(i, 48, 48))


def test_feet_first_and_flipped_rows_end_in_the_canonical_lps_frame() -> None:
    # Rows run right-to-left and columns anterior-to-posterior reversed: the acquisition axes point to -x and -y.
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    volume = assemble(build_series(SeriesSpec(n=12, orientation=flipped)))
    assert volume.direction == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # The normal of (-x) x (-y) is +z: slice order is unchanged; both in-plane axes are flipped.
    assert int(volume.hu[5, -1, -1]) == 5 and int(volume.hu[5, -1, -2]) == 100
    assert int(volume.hu[0, 0, 0]) == -1000


def test_a_coronal_series_is_turned_into_axial_canonical_axes() -> None:
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows along +x, columns downwards (-z), normal +y
    volume = assemble(build_series(SeriesSpec(n=16, orientation=coronal)))
    assert volume.hu.shape == (48, 16, 48)  # (z: superior, y: posterior = acquisition slices, x)
    assert volume.direction == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    assert volume.spacing_mm == pytest.approx((0.7, 1.25, 0.7))
    # Acquisition slice k's top-left corner (marker k) is the most superior row: z = last.
    assert [int(v) for v in volume.hu[-1, :, 0]] == list(range(16))


def test_an_enhanced_multi_frame_ct_is_assembled_from_its_functional_groups() -> None:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))  # type: ignore[arg-type]
    builder = VolumeBuilder("1.2", str(ds.SeriesInstanceUID))
    decoder = SeriesDecoder(builder)
    decoder.add(to_bytes(ds))
    decoder.close()
    volume = builder.finish(QualityLimits(min_air_fraction=0.0))
    assert volume.hu.shape == (2, 512, 512)
    frames = ds.PerFrameFunctionalGroupsSequence
    zs = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames)
    assert volume.spacing_mm[0] == pytest.approx(abs(zs[1] - zs[0]))
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    stored = ds.pixel_array
    expected = np.clip(
        stored.astype(np.float64) * float(transform.RescaleSlope) + float(transform.RescaleIntercept), -1024, 3071
    )
    assert {tuple(np.asarray(volume.hu[k]).ravel()[:50]) for k in range(2)} == {
        tuple(np.rint(expected[k]).astype(np.int16).ravel()[:50]) for k in range(2)
    }


def _missing_slices() -> list[pydicom.Dataset]:
    return build_series(SeriesSpec(positions=[k * 1.25 for k in range(24) if k not in (10, 11)]))


def _uneven() -> list[pydicom.Dataset]:
    return build_series(SeriesSpec(positions=[k * 1.25 + (0.3 if k % 3 == 0 else 0.0) for k in range(24)]))


def _duplicate() -> list[pydicom.Dataset]:
    return build_series(SeriesSpec(positions=[*[k * 1.25 for k in range(24)], 5 * 1.25]))


def _mixed_size() -> list[pydicom.Dataset]:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i == 7:
            set_pixels(ds, np.full((40, 48), 1024, dtype=np.uint16))

    return build_series(SeriesSpec(edit=edit))


def _mixed_orientation() -> list[pydicom.Dataset]:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i == 4:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.9962", "-0.0872"]

    return build_series(SeriesSpec(edit=edit))


def _gantry_tilt() -> list[pydicom.Dataset]:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.4f}", f"{y + z * np.tan(np.radians(15)):.4f}", f"{z:.4f}"]
        ds.GantryDetectorTilt = "15"

    return build_series(SeriesSpec(edit=edit))


def _too_few() -> list[pydicom.Dataset]:
    return build_series(SeriesSpec(n=6))


def _too_far_apart() -> list[pydicom.Dataset]:
    return build_series(SeriesSpec(spacing=5.0))


def _no_rescale() -> list[pydicom.Dataset]:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        ds.RescaleIntercept = "0"  # stored values are HU + 1024: air would read +24 HU

    return build_series(SeriesSpec(edit=edit))


def _padding() -> list[pydicom.Dataset]:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        stored = np.frombuffer(ds.PixelData, "<u2").reshape(48, 48).copy()
        stored[:, :30] = 0  # most of every image is padding (a field of view that cuts the body)
        ds.PixelPaddingValue = 0
        set_pixels(ds, stored)

    return build_series(SeriesSpec(edit=edit))


DEFECTS: list[tuple[str, Callable[[], list[pydicom.Dataset]]]] = [
    ("gaps", _missing_slices),
    ("uneven_spacing", _uneven),
    ("duplicate_positions", _duplicate),
    ("mixed_size", _mixed_size),
    ("mixed_orientation", _mixed_orientation),
    ("gantry_tilt", _gantry_tilt),
    ("too_few_slices", _too_few),
    ("slice_spacing", _too_far_apart),
    ("hu_range", _no_rescale),
    ("pixel_padding", _padding),
]


@pytest.mark.parametrize(("check", "series"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_each_defect_is_caught_by_its_check_and_only_by_it(
    check: str, series: Callable[[], list[pydicom.Dataset]]
) -> None:
    with pytest.raises(QualityCheckFailed) as err:
        assemble(series())
    assert err.value.verdict.failed_checks() == (check,)
    assert f"{check}: " in str(err.value) and "study 1.2.3: not analysable" in str(err.value)


def test_every_check_has_a_defect_test() -> None:
    assert sorted(c for c, _ in DEFECTS) == sorted(CHECKS)


def test_declared_and_undeclared_padding_outside_the_body_is_air_not_tissue() -> None:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        stored = np.frombuffer(ds.PixelData, "<u2").reshape(48, 48).copy()  # HU + 3024
        if i % 2 == 0:
            stored[:, :3] = 0  # declared: PixelPaddingValue 0 (-3024 HU)
            ds.PixelPaddingValue = 0
        else:
            stored[:, :3] = 1024  # undeclared: -2000 HU, below the scale
        set_pixels(ds, stored)

    volume = assemble(build_series(SeriesSpec(intercept=-3024.0, edit=edit)))
    assert int(volume.hu[:, :, :3].max()) == -1024 and int(volume.hu[:, :, :3].min()) == -1024
    np.testing.assert_array_equal(volume.hu[:, :, 3:], np.stack([chest_like(i, 48, 48)[:, 3:] for i in range(24)]))
    assert volume.verdict is not None
    padding = next(r for r in volume.verdict.results if r.check == "pixel_padding")
    assert padding.passed and "6.2% of voxels are padding" in padding.detail


def test_a_non_ct_instance_is_not_analysable_and_names_the_instance() -> None:
    datasets = build_series(SeriesSpec(n=12))
    datasets[3].Modality = "MR"
    with pytest.raises(NotAnalyzableError, match=rf"instance {datasets[3].SOPInstanceUID}: modality MR"):
        assemble(datasets)


def test_older_callers_assemble_decoded_slices() -> None:
    slices = [
        CtSlice(f"1.2.{k}", (0.0, 0.0, k * 2.5), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.7, 0.7), chest_like(k, 16, 16))
        for k in (3, 0, 2, 1)
    ]
    volume = assemble_volume("1.2", "1.2.1", slices, 3.0)
    assert volume.spacing_mm == (2.5, 0.7, 0.7)
    assert volume.sop_uids == ("1.2.0", "1.2.1", "1.2.2", "1.2.3")
