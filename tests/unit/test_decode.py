"""Reading instances without a Dataset, in every transfer syntax, on real files and on compressed synthetic series."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from imaging_cds.imaging.decode import SeriesDecoder, decode_frame, shared_pool
from imaging_cds.imaging.instance import InstanceError, read_instance
from imaging_cds.imaging.quality import QualityLimits
from imaging_cds.imaging.volume import VolumeBuilder
from tests.synthetic_series import SeriesSpec, build_series, to_bytes

# (file, what it is): pydicom's test files and pydicom-data
REAL_FILES = [
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "image_dfl.dcm",  # deflated explicit VR little endian
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless, process 14 SV1
    "bad_sequence.dcm",  # a 512x512 CT, JPEG lossless
    "693_J2KR.dcm",  # a 512x512 CT, JPEG 2000 lossless (pydicom-data)
    "693_UNCI.dcm",
    "RG1_UNCI.dcm",  # a chest radiograph, 1955x1841 (pydicom-data)
    "RG1_J2KR.dcm",
    "emri_small_RLE.dcm",  # enhanced MR, 10 frames
    "emri_small_jpeg_ls_lossless.dcm",
    "emri_small_big_endian.dcm",
    "eCT_Supplemental.dcm",  # enhanced CT, 2 frames (pydicom-data)
]


def frames_of(data: bytes) -> np.ndarray:
    header = read_instance(data)
    if not header.encapsulated:
        frames = [header.native_frame(k) for k in range(header.frames)]
    else:
        from pydicom.encaps import encapsulate, generate_frames

        value = header.encapsulated_value()
        options = header.decoder_options()
        options["number_of_frames"] = 1
        frames = [
            decode_frame(header.transfer_syntax, encapsulate([f]), options)
            for f in generate_frames(value, number_of_frames=header.frames)
        ]
    return np.stack(frames) if header.frames > 1 else frames[0]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_decode_to_what_pydicom_decodes(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: install the test extra (pydicom-data)"
    data = open(path, "rb").read()  # noqa: SIM115
    ds = pydicom.dcmread(io.BytesIO(data))
    ours = frames_of(data)
    np.testing.assert_array_equal(ours, ds.pixel_array)
    header = read_instance(data)
    assert (header.rows, header.columns, header.frames) == (ds.Rows, ds.Columns, int(ds.get("NumberOfFrames", 1)))
    if "ImagePositionPatient" in ds:
        assert header.geometry[0].position_lps_mm == tuple(float(v) for v in ds.ImagePositionPatient)


def test_enhanced_ct_frames_carry_their_own_positions() -> None:
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))  # type: ignore[arg-type]
    header = read_instance(open(get_testdata_file("eCT_Supplemental.dcm"), "rb").read())  # type: ignore[arg-type]  # noqa: SIM115
    positions = [
        tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    assert [g.position_lps_mm for g in header.geometry] == positions


def test_the_header_reader_keeps_nothing_that_names_the_patient() -> None:
    ds = build_series(SeriesSpec(n=1))[0]
    header = read_instance(to_bytes(ds))
    fields = {k: v for k, v in vars(header).items() if k != "data"}
    text = repr(fields)
    assert "Testpatient" not in text and "PHI-424242" not in text and "19511231" not in text


def test_truncated_bytes_are_an_error_not_a_crash() -> None:
    data = to_bytes(build_series(SeriesSpec(n=1))[0])
    header = read_instance(data[:400])
    assert not header.has_pixels
    with pytest.raises(InstanceError, match="no pixel data"):
        header.native_frame(0)
    with pytest.raises(InstanceError, match="needs"):
        read_instance(data[:-100]).native_frame(0)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless, DeflatedExplicitVRLittleEndian])
def test_a_compressed_series_assembles_to_the_same_volume_as_uncompressed(syntax: str) -> None:
    spec = SeriesSpec(n=12)
    plain = build_series(spec)
    compressed = build_series(spec)
    for ds in compressed:
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax != JPEGLSLossless else "pyjpegls")

    def volume(series: list[pydicom.Dataset], pool: bool) -> np.ndarray:
        builder = VolumeBuilder(spec.study_uid, spec.series_uid, len(series))
        decoder = SeriesDecoder(builder, shared_pool() if pool else None)
        for ds in series:
            decoder.add(to_bytes(ds))
        decoder.close()
        return builder.finish(QualityLimits(min_slices=10)).hu

    expected = volume(plain, pool=False)
    np.testing.assert_array_equal(volume(compressed, pool=True), expected)  # decoded in the process pool
    np.testing.assert_array_equal(volume(compressed, pool=False), expected)  # and in this process


def test_file_meta_without_preamble_is_read_as_some_pacs_send_it() -> None:
    data = to_bytes(build_series(SeriesSpec(n=1))[0])[128 + 4 :]  # no preamble, no "DICM"
    header = read_instance(data)
    assert header.modality == "CT" and header.transfer_syntax == "1.2.840.10008.1.2.1"
    assert header.native_frame(0).shape == (48, 48)
