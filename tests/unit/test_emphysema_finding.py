"""Emphysema as a coded finding: its size and its location (lung zone, side) in patient terms."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from imaging_cds.analysis.findings import emphysema_finding
from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code
from imaging_cds.fhir.report import CodedFinding
from imaging_cds.imaging.volume import CtVolume

SHAPE = (30, 40, 60)  # (z, y, x) in the canonical frame: z towards the head, x towards the patient's left


def phantom(laa: npt.NDArray[np.bool_]) -> tuple[CtVolume, npt.NDArray[np.bool_]]:
    """Two box lungs (patient right: low x, patient left: high x) at -860 HU, -980 HU where ``laa``."""
    lungs = np.zeros(SHAPE, dtype=bool)
    lungs[:, 10:30, 5:25] = True  # right lung
    lungs[:, 10:30, 35:55] = True  # left lung
    hu = np.full(SHAPE, 40, dtype=np.int16)
    hu[lungs] = -860
    hu[lungs & laa] = -980
    volume = CtVolume("1.2.3", "1.2.3.4", hu, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(str(i) for i in range(SHAPE[0])))
    return volume, lungs


def location(finding: CodedFinding) -> dict[str, Code]:
    return {c.code.code: c.concept for c in finding.components if c.concept is not None}


def test_low_attenuation_in_the_upper_right_lung_is_located_there() -> None:
    laa = np.zeros(SHAPE, dtype=bool)
    laa[22:30, 12:28, 8:20] = True  # top slices, right lung
    volume, lungs = phantom(laa)

    finding = emphysema_finding(volume, lungs, present=True)

    assert finding.value == codes.PRESENT and finding.interpretation == codes.INTERPRETATION_ABNORMAL
    size = finding.components[0]
    assert size.code == codes.LAA950_VOLUME and size.unit == codes.MILLILITRE
    assert size.quantity == laa.sum() * 2.0 / 1000.0
    assert location(finding) == {codes.FINDING_SITE.code: codes.UPPER_ZONE, codes.LATERALITY.code: codes.RIGHT}


def test_even_low_attenuation_in_both_lower_lungs_is_lower_zone_and_bilateral() -> None:
    laa = np.zeros(SHAPE, dtype=bool)
    laa[0:8, 12:28, 8:20] = True
    laa[0:8, 12:28, 40:52] = True
    volume, lungs = phantom(laa)

    finding = emphysema_finding(volume, lungs, present=True)

    assert location(finding) == {codes.FINDING_SITE.code: codes.LOWER_ZONE, codes.LATERALITY.code: codes.RIGHT_AND_LEFT}


def test_scattered_low_attenuation_has_no_zonal_predominance() -> None:
    laa = np.zeros(SHAPE, dtype=bool)
    laa[::3, 12:28:4, 40:52:3] = True  # evenly through the left lung
    volume, lungs = phantom(laa)

    finding = emphysema_finding(volume, lungs, present=False)

    assert finding.value == codes.ABSENT and finding.interpretation == codes.INTERPRETATION_NORMAL
    assert location(finding) == {
        codes.FINDING_SITE.code: codes.NO_ZONE_PREDOMINANCE,
        codes.LATERALITY.code: codes.LEFT,
    }


def test_without_low_attenuation_there_is_a_size_of_zero_and_no_location() -> None:
    volume, lungs = phantom(np.zeros(SHAPE, dtype=bool))

    finding = emphysema_finding(volume, lungs, present=False)

    assert [(c.code, c.quantity) for c in finding.components] == [(codes.LAA950_VOLUME, 0.0)]
