"""Retrieval from the real Orthanc (scripts/sandbox): series described for rules, stored syntax decoded here."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY, Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.dicomweb.selection import select_series
from imaging_cds.errors import TransientError
from imaging_cds.imaging.decode import SeriesDecoder, shared_pool
from imaging_cds.imaging.instance import read_instance
from imaging_cds.imaging.quality import QualityLimits
from imaging_cds.imaging.volume import VolumeBuilder
from imaging_cds.inference.manifest import SeriesRule, load_manifest
from tests.synthetic_series import SeriesSpec, build_series, to_bytes

pytestmark = pytest.mark.services


def _volume(parts: object, study: str, series: str, expected: int, pool: bool = True) -> np.ndarray:
    builder = VolumeBuilder(study, series, expected)
    decoder = SeriesDecoder(builder, shared_pool() if pool else None)
    for part in parts:  # type: ignore[attr-defined]
        decoder.add(part)
    decoder.close()
    return builder.finish(QualityLimits(min_slices=10)).hu


def test_series_are_described_selected_and_streamed_in_their_stored_syntax(sandbox: dict[str, str]) -> None:
    settings = Settings.from_env(sandbox)
    study = generate_uid()
    axial = SeriesSpec(n=24, study_uid=study)
    plain = build_series(axial)
    j2k_spec = SeriesSpec(n=24, study_uid=study, series_uid=generate_uid())
    j2k = build_series(j2k_spec)
    for ds in j2k:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    scout = build_series(SeriesSpec(n=2, study_uid=study, series_uid=generate_uid()))
    for ds in scout:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "Scout"
    with PacsClient.from_settings(settings) as pacs:
        pacs.store([*plain, *j2k, *scout])
        found = {s.series_uid: s for s in pacs.search_series(study)}
        assert found[axial.series_uid].image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
        assert found[axial.series_uid].orientation == "AXIAL"
        assert found[axial.series_uid].slice_thickness_mm == 1.25
        assert found[scout[0].SeriesInstanceUID].image_type[-1] == "LOCALIZER"
        model_rule = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density").selection
        rule = SeriesRule(accept=model_rule.accept.parts[0], quality=model_rule.quality)  # type: ignore[attr-defined]
        chosen = select_series(study, list(found.values()), rule)
        assert chosen.series_uid in (axial.series_uid, j2k_spec.series_uid)  # the scout is refused
        expected = _volume([to_bytes(ds) for ds in plain], study, axial.series_uid, 24, pool=False)
        stream = pacs.iter_series(study, axial.series_uid)
        assert stream.expected_images == 24
        np.testing.assert_array_equal(_volume(stream, study, axial.series_uid, 24), expected)
        j2k_stream = pacs.iter_series(study, j2k_spec.series_uid)
        np.testing.assert_array_equal(_volume(j2k_stream, study, j2k_spec.series_uid, 24), expected)
    # What Orthanc sent for the JPEG 2000 series was JPEG 2000: decoded here, not transcoded there.
    with PacsClient.from_settings(settings) as pacs:
        pacs.search_series(study)
        first = next(iter(pacs.iter_series(study, j2k_spec.series_uid)))
        assert read_instance(bytes(first)).transfer_syntax == JPEG2000Lossless


def test_wrong_credentials_are_a_transient_error_naming_the_study(sandbox: dict[str, str]) -> None:
    settings = Settings.from_env({**sandbox, "IMAGING_CDS_DICOMWEB_PASSWORD": "wrong"})
    with PacsClient.from_settings(settings) as pacs, pytest.raises(TransientError, match=r"study 1\.2\.3: PACS"):
        pacs.search_series("1.2.3")
