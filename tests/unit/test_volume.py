import numpy as np
import pytest

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.slices import CtSlice
from imaging_cds.imaging.volume import assemble_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def slices_at(zs: list[float], orientation: tuple[float, ...] = AXIAL) -> list[CtSlice]:
    return [
        CtSlice(
            sop_uid=f"1.2.3.{i}",
            position_lps_mm=(0.0, 0.0, z),
            orientation=orientation,  # type: ignore[arg-type]
            pixel_spacing_mm=(0.7, 0.7),
            hu=np.full((4, 4), i, dtype=np.int16),
        )
        for i, z in enumerate(zs)
    ]


def test_slices_are_sorted_by_position_and_spacing_measured() -> None:
    shuffled = slices_at([5.0, 0.0, 2.5, 7.5])
    volume = assemble_volume("1.2", "1.2.1", shuffled, 3.0)
    assert volume.spacing_mm == (2.5, 0.7, 0.7)
    assert [int(v) for v in volume.hu[:, 0, 0]] == [1, 2, 0, 3]
    assert volume.origin_lps_mm == (0.0, 0.0, 0.0)
    assert volume.voxel_volume_ml == pytest.approx(2.5 * 0.49 / 1000)


@pytest.mark.parametrize(
    ("zs", "why"),
    [
        ([0.0, 2.5, 5.0, 10.0, 12.5], "uneven slice spacing"),  # one slice missing
        ([0.0, 2.5, 2.5, 5.0], "share one slice position"),
        ([0.0, 5.0, 10.0], "5.00 mm apart"),
    ],
)
def test_bad_geometry_is_not_analysable(zs: list[float], why: str) -> None:
    with pytest.raises(NotAnalyzableError, match=why):
        assemble_volume("1.2", "1.2.1", slices_at(zs), 3.0)


def test_non_axial_series_is_not_analysable() -> None:
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    with pytest.raises(NotAnalyzableError, match="not an axial"):
        assemble_volume("1.2", "1.2.1", slices_at([0.0, 1.0], coronal), 3.0)
