import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.slices import decode_ct_slice


def ct_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def test_ct_pixels_become_hounsfield_units_and_geometry() -> None:
    ds = ct_small()
    ct = decode_ct_slice(ds, "1.2")
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert ct.hu.dtype == np.int16 and ct.hu.shape == (128, 128)
    np.testing.assert_array_equal(ct.hu, np.clip(np.rint(expected), -1024, 3071))
    assert ct.position_lps_mm == tuple(float(v) for v in ds.ImagePositionPatient)
    assert ct.pixel_spacing_mm == tuple(float(v) for v in ds.PixelSpacing)


def test_truncated_pixel_data_is_not_analysable_and_names_the_instance() -> None:
    ds = ct_small()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    with pytest.raises(NotAnalyzableError, match=rf"study 1\.2: .*instance {ds.SOPInstanceUID}: pixel data"):
        decode_ct_slice(ds, "1.2")


def test_missing_geometry_is_not_analysable() -> None:
    ds = ct_small()
    del ds.ImagePositionPatient
    with pytest.raises(NotAnalyzableError, match="missing ImagePositionPatient"):
        decode_ct_slice(ds, "1.2")


def test_an_mr_image_is_not_analysable_as_ct() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    with pytest.raises(NotAnalyzableError, match="modality MR, expected CT"):
        decode_ct_slice(ds, "1.2")
