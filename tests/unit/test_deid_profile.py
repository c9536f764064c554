"""PS3.15 Table E.1-1 as data, and each of its actions applied (deid-data's real files and built datasets)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import deid_data
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from imaging_cds.deid.deidentify import Deidentifier, DeidOptions
from imaging_cds.deid.profile import KEEP_UID_TAGS, TABLE, parse_table, resolve, row_for
from tests.synthetic_series import SeriesSpec, build_series

DEID_DATA = Path(deid_data.__file__).parent / "data"
KEY = b"0123456789abcdef0123456789abcdef"

# Rows of Table E.1-1 as the standard publishes them (innolitics/dicom-standard,
# standard/confidentiality_profile_attributes.json), to check the transcription against.
PUBLISHED = {
    0x00100010: "Z",  # Patient's Name
    0x00100030: "Z",  # Patient's Birth Date
    0x00080018: "U",  # SOP Instance UID
    0x0020000D: "U",  # Study Instance UID
    0x0020000E: "U",  # Series Instance UID
    0x00080080: "X/Z/D",  # Institution Name
    0x00080050: "Z",  # Accession Number
    0x00184000: "X",  # Acquisition Comments
    0x00400555: "X/Z",  # Acquisition Context Sequence
    0x00080022: "X/Z",  # Acquisition Date
    0x0008002A: "X/Z/D",  # Acquisition DateTime
    0x00181400: "X/D",  # Acquisition Device Processing Description
    0x00700084: "Z/D",  # Content Creator's Name
    0x0040A730: "D",  # Content Sequence
    0x00180010: "Z/D",  # Contrast/Bolus Agent
    0x00181000: "X/Z/D",  # Device Serial Number
    0x00081140: "X/Z/U*",  # Referenced Image Sequence
    0x00081111: "X/Z/D",  # Referenced Performed Procedure Step Sequence
    0x00080021: "X/D",  # Series Date
    0x00181030: "X/D",  # Protocol Name
    0x0040A123: "D",  # Person Name
    0x00080090: "Z",  # Referring Physician's Name
    0x00081120: "X",  # Referenced Patient Sequence
    0x30060026: "Z",  # ROI Name
}


def test_the_table_is_transcribed_whole_and_matches_the_published_rows() -> None:
    assert len(TABLE) >= 600  # 655 rows in the 2026c edition
    assert len({(r.tag, r.mask) for r in TABLE}) == len(TABLE)
    for tag, code in PUBLISHED.items():
        row = row_for(tag)
        assert row is not None and row.code == code, f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    overlay = row_for(0x60023000)  # Overlay Data of the second overlay plane: a repeating group
    assert overlay is not None and overlay.code == "X" and overlay.name == "Overlay Data"


def test_a_malformed_table_row_is_refused() -> None:
    with pytest.raises(ValueError, match=r"E\.1-1"):
        parse_table("tag,name,basic_profile\n0010001,Patient's Name,Z\n")
    with pytest.raises(ValueError, match=r"E\.1-1"):
        parse_table("tag,name,basic_profile\n00100010,Patient's Name,Q\n")


@pytest.mark.parametrize(
    ("code", "action"),
    [("X", "X"), ("Z", "Z"), ("D", "D"), ("U", "U"), ("X/Z", "Z"), ("X/D", "D"), ("Z/D", "Z"), ("X/Z/D", "Z")],
)
def test_compound_codes_keep_the_attribute_with_the_least_telling_value(code: str, action: str) -> None:
    assert resolve(code) == action
    assert resolve("X/Z/U*") == "U*"


def _every_action() -> Dataset:
    ds = build_series(SeriesSpec(n=1))[0]
    ds.StudyDescription = "Lung screening for Testpatient"  # X
    ds.InstitutionName = "St Elsewhere Hospital"  # X/Z/D -> Z
    ds.ProtocolName = "Dr Jones special protocol"  # X/D -> D
    ds.RequestedProcedureDescription = "CT for Testpatient"  # X/Z -> Z
    ds.ContentCreatorName = "Nurse^Ratched"  # Z/D -> Z
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    ref.ReferringPhysicianName = "Nested^Doctor"  # PN inside a sequence
    ds.ReferencedImageSequence = Sequence([ref])  # X/Z/U*
    item = Dataset()
    item.PersonName = "Observer^Olive"  # D, inside Content Sequence (D: items cleaned)
    item.DateTime = "20240301120000"  # D
    ds.ContentSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", "private site code")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    ds.add_new(0x60000010, "US", 4)  # overlay rows
    return ds


def test_each_action_of_the_table_is_applied_in_sequences_too() -> None:
    original = _every_action()
    deid = Deidentifier(DeidOptions(key=KEY, dates="remove"))
    copy = deid.deidentify(original).dataset
    assert "StudyDescription" not in copy  # X
    assert copy.InstitutionName == ""  # X/Z/D -> Z
    assert copy.ProtocolName == "ANONYMIZED"  # X/D -> D
    assert copy.RequestedProcedureDescription == "" and copy.ContentCreatorName == ""
    ref = copy.ReferencedImageSequence[0]  # X/Z/U*: kept, its UIDs remapped, its other attributes cleaned
    assert ref.ReferencedSOPInstanceUID == deid.uid("1.2.3.4.5.6.7.8.9")
    assert ref.ReferencedSOPClassUID == original.SOPClassUID  # a registered class identifies nobody
    assert ref.ReferringPhysicianName == ""
    item = copy.ContentSequence[0]
    assert item.PersonName == "ANONYMIZED" and item.DateTime == "19000101000000"  # D on PN and DT
    assert not any(e.tag.is_private for e in copy)
    assert not any(e.tag.group == 0x6000 for e in copy)
    assert copy.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in copy.DeidentificationMethodCodeSequence] == ["113100"]
    assert [c.CodingSchemeDesignator for c in copy.DeidentificationMethodCodeSequence] == ["DCM"]


def test_the_modified_dates_option_shifts_dates_the_table_would_remove_and_says_so() -> None:
    original = _every_action()
    original.SeriesDate = "20240301"  # X/D
    copy = Deidentifier(DeidOptions(key=KEY, date_shift_days=1)).deidentify(original).dataset
    assert copy.SeriesDate == "20240229"
    assert copy.ContentSequence[0].DateTime == "20240229120000"
    assert copy.PatientBirthDate == ""  # never shifted: it narrows down who the patient is
    assert [c.CodeValue for c in copy.DeidentificationMethodCodeSequence] == ["113100", "113107"]


def _values(ds: Dataset, vrs: frozenset[str], skip: frozenset[int] = frozenset()) -> set[str]:
    """Every value of these VRs in ``ds``, its sequences included, but for the attributes ``skip``."""
    found: set[str] = set()
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found |= _values(item, vrs, skip)
        elif element.VR in vrs and element.value not in (None, "") and int(element.tag) not in skip:
            values = element.value if isinstance(element.value, list | tuple | Sequence) else [element.value]
            if type(element.value).__name__ == "MultiValue":
                values = list(element.value)
            found |= {str(v) for v in values if str(v).strip()}
    return found


def _word(value: str, text: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", text) is not None


def _header_text(ds: Dataset) -> str:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    header = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    if "PixelData" in header:
        del header.PixelData
    out = io.BytesIO()
    header.save_as(out, enforce_file_format=True)
    return out.getvalue().decode("latin-1")


@pytest.mark.parametrize("path", sorted(DEID_DATA.rglob("*.dcm")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_name_date_or_instance_uid_of_a_real_file_survives(path: Path) -> None:
    original = pydicom.dcmread(path)
    copy = Deidentifier(DeidOptions(key=KEY, dates="remove")).deidentify(original).dataset
    text = _header_text(copy)
    names = {
        part for v in _values(original, frozenset({"PN"})) for part in v.replace("^", " ").split() if len(part) > 3
    }
    dates = {v[:8] for v in _values(original, frozenset({"DA", "DT"})) if len(v) >= 8 and v[:8] != "19000101"}
    # SOP class UIDs (a vendor's private class too) name a kind of object, not a patient: kept.
    uids = {v for v in _values(original, frozenset({"UI"}), KEEP_UID_TAGS) if v not in UID_dictionary}
    kept = " ".join(str(original.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName"))
    assert not [n for n in names if _word(n, text) and n not in kept], "a name survived"
    assert not [d for d in dates if d in text], "a date survived"
    assert not [u for u in uids if u in text], "an instance UID survived"
    assert _values(copy, frozenset({"DA", "DT"})) <= {"19000101", "19000101000000"}


def test_uids_of_a_real_study_are_remapped_consistently_across_its_files() -> None:
    paths = sorted((DEID_DATA / "humans").glob("ctbrain*.dcm"))
    originals = [pydicom.dcmread(p) for p in paths]
    assert len(originals) == 2 and originals[0].StudyInstanceUID == originals[1].StudyInstanceUID
    deid = Deidentifier(DeidOptions(key=KEY))
    copies = [deid.deidentify(ds).dataset for ds in originals]
    assert copies[0].StudyInstanceUID == copies[1].StudyInstanceUID == deid.uid(originals[0].StudyInstanceUID)
    same_instance = originals[0].SOPInstanceUID == originals[1].SOPInstanceUID  # deid-data holds one twice
    assert (copies[0].SOPInstanceUID == copies[1].SOPInstanceUID) == same_instance
    for original, copy in zip(originals, copies, strict=True):
        assert copy.SeriesInstanceUID == deid.uid(original.SeriesInstanceUID)
        assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
        if "FrameOfReferenceUID" in original:
            assert copy.FrameOfReferenceUID == deid.uid(original.FrameOfReferenceUID)
        assert copy.PatientID == copies[0].PatientID != original.PatientID  # one pseudonym per patient
