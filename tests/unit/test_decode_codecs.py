"""imagecodecs decoding: bit-identical to pydicom's pixel_array on real files, threads not processes, and pydicom's
decoders when imagecodecs is missing or refuses a frame."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging import decode
from imaging_cds.imaging.decode import DecodePool, SeriesDecoder, decode_codestream, fast_codec
from imaging_cds.imaging.instance import read_instance
from imaging_cds.imaging.quality import QualityLimits
from imaging_cds.imaging.volume import VolumeBuilder
from tests.synthetic_series import SeriesSpec, build_series, to_bytes

# (file, decoded by imagecodecs?): pydicom's test files and pydicom-data, every compressed syntax a CT may come in
FILES = [
    ("693_J2KR.dcm", True),  # CT 512x512, JPEG 2000 lossless, signed
    ("693_J2KI.dcm", True),  # JPEG 2000 lossy, 14 bits stored
    ("MR_small_jp2klossless.dcm", True),
    ("emri_small_jpeg_2k_lossless.dcm", True),  # 10 frames, 12 bits stored
    ("J2K_pixelrep_mismatch.dcm", True),  # codestream unsigned, Pixel Representation signed: sign-corrected
    ("RG1_J2KR.dcm", True),  # MONOCHROME1, 15 bits stored
    ("MR_small_jpeg_ls_lossless.dcm", True),  # JPEG-LS, signed
    ("emri_small_jpeg_ls_lossless.dcm", True),
    ("JPEGLSNearLossless_16.dcm", True),
    ("JPEG-LL.dcm", True),  # JPEG lossless process 14, signed
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", True),
    ("bad_sequence.dcm", True),  # CT 512x512, JPEG lossless SV1
    ("MR_small_RLE.dcm", False),  # RLE: pydicom's decoders
    ("emri_small_RLE.dcm", False),
    ("US1_J2KR.dcm", False),  # colour: pydicom's decoders
]


def frames(name: str) -> tuple[pydicom.Dataset, str, list[bytes], dict[str, object]]:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: install the test extra (pydicom-data)"
    data = open(path, "rb").read()  # noqa: SIM115
    header = read_instance(data)
    options = header.decoder_options()
    options["number_of_frames"] = 1
    codestreams = list(generate_frames(header.encapsulated_value(), number_of_frames=header.frames))
    return pydicom.dcmread(io.BytesIO(data)), header.transfer_syntax, codestreams, options


@pytest.mark.parametrize(("name", "fast"), FILES, ids=[f for f, _ in FILES])
def test_frames_decode_bit_identical_to_pydicom(name: str, fast: bool) -> None:
    ds, syntax, codestreams, options = frames(name)
    assert (fast_codec(syntax, options) is not None) == fast
    expected = ds.pixel_array if len(codestreams) > 1 else ds.pixel_array[np.newaxis]
    for k, codestream in enumerate(codestreams):
        ours = decode_codestream(syntax, codestream, options)
        assert ours.dtype == expected.dtype
        np.testing.assert_array_equal(ours, expected[k])


@pytest.mark.parametrize("name", ["693_J2KR.dcm", "JPEG-LL.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_without_imagecodecs_pydicom_decodes_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds, syntax, codestreams, options = frames(name)
    monkeypatch.setattr(decode, "imagecodecs", None)
    assert fast_codec(syntax, options) is None
    np.testing.assert_array_equal(decode_codestream(syntax, codestreams[0], options), ds.pixel_array)


def test_a_frame_imagecodecs_refuses_goes_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    ds, syntax, codestreams, options = frames("693_J2KR.dcm")

    def refuse(codestream: bytes) -> np.ndarray:
        raise RuntimeError("codec refused the frame")

    monkeypatch.setattr(decode, "_jpeg2k", refuse)
    np.testing.assert_array_equal(decode_codestream(syntax, codestreams[0], options), ds.pixel_array)


def _j2k_series(n: int) -> tuple[SeriesSpec, list[bytes], list[pydicom.Dataset]]:
    spec = SeriesSpec(n=n)
    plain = build_series(spec)
    compressed = build_series(spec)
    for ds in compressed:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return spec, [to_bytes(ds) for ds in compressed], plain


def test_jpeg2000_is_decoded_by_threads_of_this_process_into_the_same_volume() -> None:
    spec, compressed, plain = _j2k_series(12)
    pool = DecodePool(2)
    try:
        builder = VolumeBuilder(spec.study_uid, spec.series_uid, len(compressed))
        decoder = SeriesDecoder(builder, pool)
        for data in compressed:
            decoder.add(data)
        decoder.close()
        assert pool._processes is None  # no process was started, nothing was pickled
        expected = VolumeBuilder(spec.study_uid, spec.series_uid, len(plain))
        reference = SeriesDecoder(expected)
        for ds in plain:
            reference.add(to_bytes(ds))
        limits = QualityLimits(min_slices=10)
        np.testing.assert_array_equal(builder.finish(limits).hu, expected.finish(limits).hu)
    finally:
        pool.close()


@pytest.mark.parametrize("pooled", [False, True])
def test_a_corrupt_frame_is_not_analysable_naming_the_instance(pooled: bool) -> None:
    spec, compressed, _ = _j2k_series(1)
    ds = pydicom.dcmread(io.BytesIO(compressed[0]))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200])  # a codestream start, then nothing valid
    pool = DecodePool(2) if pooled else None
    try:
        decoder = SeriesDecoder(VolumeBuilder(spec.study_uid, spec.series_uid, 1), pool)
        with pytest.raises(NotAnalyzableError, match=f"instance {ds.SOPInstanceUID}: pixel data cannot be decoded"):
            decoder.add(to_bytes(ds))
            decoder.close()
    finally:
        if pool is not None:
            pool.close()
