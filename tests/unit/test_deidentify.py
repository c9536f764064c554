"""`imaging-cds deidentify` on real files (pydicom's test files, pydicom-data, deid-data) and a synthetic series."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import deid_data
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_cds.cli import main
from imaging_cds.deid.deidentify import Deidentifier, DeidOptions
from tests.synthetic_series import PHI, SeriesSpec, build_series

DEID_DATA = Path(deid_data.__file__).parent / "data"
KEY = b"0123456789abcdef0123456789abcdef"
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "AccessionNumber",
    "OperatorsName",
    "StationName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def real_files() -> list[Path]:
    pydicom_files = [
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "693_J2KR.dcm",
        "RG1_UNCI.dcm",
        "eCT_Supplemental.dcm",
    ]
    paths = [Path(get_testdata_file(name)) for name in pydicom_files]  # type: ignore[arg-type]
    paths += sorted(p for p in DEID_DATA.rglob("*.dcm") if "cookies" not in p.parts)
    return paths


def markers(ds: pydicom.Dataset) -> set[str]:
    """Identifying values of the original worth searching for (long enough not to match by chance); a value that
    only repeats the manufacturer (kept by the profile) is not one."""
    kept = " ".join(str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName"))
    found = {part for part in str(ds.get("PatientName", "")).replace("^", " ").split() if len(part) >= 4}
    for keyword in IDENTIFYING:
        text = str(ds.get(keyword, "") or "")
        if len(text) >= 5:
            found.add(text)
    return {m for m in found if m not in kept}


def leaked(markers: set[str], data: bytes) -> list[str]:
    """Markers found as whole words in the saved header (pixel bytes may hold any letters by chance)."""
    header = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" in header:
        del header.PixelData
    text = saved(header).decode("latin-1")
    return sorted(m for m in markers if re.search(rf"(?<![A-Za-z0-9]){re.escape(m)}(?![A-Za-z0-9])", text))


def saved(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("path", real_files(), ids=lambda p: p.name)
def test_real_files_lose_every_identifying_value_and_keep_their_pixels(path: Path) -> None:
    original = pydicom.dcmread(path)
    result = Deidentifier(DeidOptions(key=KEY)).deidentify(original)
    data = saved(result.dataset)
    copy = pydicom.dcmread(io.BytesIO(data))
    assert not leaked(markers(original), data), f"left in the copy of {path.name}"
    assert copy.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in copy.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert not any(e.tag.is_private for e in copy)
    if "PixelData" in original:
        assert copy.PixelData == original.PixelData
    if "StudyInstanceUID" in original:
        assert copy.StudyInstanceUID.startswith("2.25.")


def test_ultrasound_and_burned_in_annotation_are_flagged_and_ct_is_not() -> None:
    deid = Deidentifier(DeidOptions(key=KEY))
    names = ("GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm", "ctbrain1.dcm")
    flags = {name: deid.deidentify(pydicom.dcmread(next(DEID_DATA.rglob(name)))).burned_in_text_risk for name in names}
    assert flags["GREYSCALE_IMAGE.dcm"] == "BurnedInAnnotation is YES"
    assert "US" in flags["RGB_IMAGE.dcm"]
    assert "secondary capture" in flags["ctbrain1.dcm"]  # deid-data's head CT is a screen capture
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    assert deid.deidentify(ct).burned_in_text_risk == ""


def test_uids_are_remapped_consistently_and_references_follow() -> None:
    series = build_series(SeriesSpec(n=4))
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = series[0].SOPClassUID
    ref.ReferencedSOPInstanceUID = series[0].SOPInstanceUID
    series[1].ReferencedImageSequence = pydicom.Sequence([ref])
    deid = Deidentifier(DeidOptions(key=KEY))
    copies = [deid.deidentify(ds).dataset for ds in series]
    assert len({c.StudyInstanceUID for c in copies}) == 1 and len({c.SeriesInstanceUID for c in copies}) == 1
    assert len({c.SOPInstanceUID for c in copies}) == 4
    assert copies[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == copies[0].SOPInstanceUID
    assert copies[1].ReferencedImageSequence[0].ReferencedSOPClassUID == series[0].SOPClassUID  # a class, kept
    assert copies[0].file_meta.MediaStorageSOPInstanceUID == copies[0].SOPInstanceUID
    again = Deidentifier(DeidOptions(key=KEY)).deidentify(series[2]).dataset
    assert again.SOPInstanceUID == copies[2].SOPInstanceUID  # same key, same mapping
    other = Deidentifier(DeidOptions(key=b"another key of 16+ bytes")).deidentify(series[2]).dataset
    assert other.SOPInstanceUID != copies[2].SOPInstanceUID


def test_dates_are_shifted_per_patient_keeping_intervals_or_removed() -> None:
    first, later = build_series(SeriesSpec(n=2))
    later.StudyDate = "20240315"  # 14 days after the first
    deid = Deidentifier(DeidOptions(key=KEY))
    a, b = deid.deidentify(first), deid.deidentify(later)
    assert a.date_shift_days == b.date_shift_days and a.date_shift_days is not None
    import datetime as dt

    days = dt.date.fromisoformat(
        b.dataset.StudyDate[:4] + "-" + b.dataset.StudyDate[4:6] + "-" + b.dataset.StudyDate[6:]
    ) - dt.date.fromisoformat(a.dataset.StudyDate[:4] + "-" + a.dataset.StudyDate[4:6] + "-" + a.dataset.StudyDate[6:])
    assert days.days == 14 and a.dataset.StudyDate != first.StudyDate
    assert a.dataset.LongitudinalTemporalInformationModified == "MODIFIED"
    fixed = Deidentifier(DeidOptions(key=KEY, date_shift_days=10)).deidentify(first).dataset
    assert fixed.StudyDate == "20240220"
    removed = Deidentifier(DeidOptions(key=KEY, dates="remove")).deidentify(first).dataset
    assert removed.StudyDate == "" and removed.StudyTime == "" and removed.PatientBirthDate == ""
    assert [c.CodeValue for c in removed.DeidentificationMethodCodeSequence] == ["113100"]


def test_the_command_writes_copies_under_new_uids_and_a_report_without_identity(tmp_path: Path) -> None:
    source = tmp_path / "Testpatient_Series"  # input names may carry identity too
    source.mkdir()
    for i, ds in enumerate(build_series(SeriesSpec(n=3))):
        ds.save_as(source / f"PHI-424242_{i}.dcm", enforce_file_format=True)
    (source / "notes.txt").write_text("not DICOM")
    us = DEID_DATA / "ultrasounds" / "GREYSCALE_IMAGE.dcm"
    (source / "us.dcm").write_bytes(us.read_bytes())
    out = tmp_path / "out"
    key = tmp_path / "secret" / "deid.key"
    assert main(["deidentify", str(source), str(out), "--key-file", str(key), "--exclude-burned-in"]) == 0
    report = json.loads((out / "deidentify.json").read_text())
    assert report["written"] == 3 and report["not_dicom_skipped"] == 1 and len(report["excluded"]) == 1
    assert report["may_carry_burned_in_text"][0]["why"] == "BurnedInAnnotation is YES"
    everything = "".join(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert not [value for value in (*PHI.values(), "Testpatient", "PHI-424242") if value in everything]
    assert all(
        part.startswith("2.25.") for p in out.rglob("*.dcm") for part in p.relative_to(out).with_suffix("").parts
    )
    first = sorted(p.name for p in out.rglob("*.dcm"))
    out2 = tmp_path / "out2"
    assert main(["deidentify", str(source), str(out2), "--key-file", str(key)]) == 0
    assert sorted(p.name for p in out2.rglob("*.dcm") if "2.25." in p.name)[: len(first)] == first or set(first) <= {
        p.name for p in out2.rglob("*.dcm")
    }
