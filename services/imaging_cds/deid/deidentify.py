"""De-identified copies of DICOM instances for research data sets (DICOM PS3.15 Annex E, Basic Profile).

``Deidentifier.deidentify(ds)`` returns a new dataset under the Basic Application Level Confidentiality Profile: every
attribute of Table E.1-1 (``profile.TABLE``, the whole table as data) gets its action, in sequences too, then a
sweep by value representation makes sure nothing the table misses carries an identity out:

- UIDs are replaced by ``2.25.<n>``, n derived from the original by HMAC-SHA-256 under a secret key: the same
  original always maps to the same new UID, so studies, series, frames of reference and references between
  instances stay consistent. Keep the key to add more instances of the same studies later; without it, the
  mapping cannot be reversed or reproduced.
- Dates are shifted back by a number of days per patient (derived from the key and the original Patient ID, or
  fixed with ``date_shift_days``), which keeps intervals between a patient's studies (the Retain Longitudinal
  Temporal Information with Modified Dates Option), or removed (``dates="remove"``).
- Patient's Name and Patient ID become one pseudonym per patient (a dummy value, which Z and Z/D allow); the other
  identifying attributes are removed, emptied or given dummy values as the table says; every other attribute of
  the Patient module, private attributes, overlays and curves are removed.
- PatientIdentityRemoved is YES and DeidentificationMethod / DeidentificationMethodCodeSequence say what was done.

Pixel data is copied unchanged. Text burned into the pixels is not removed: ``burned_in_text_risk`` flags images
that may carry it (BurnedInAnnotation YES, ultrasound, secondary captures, screen saves, document scans...), for a
person to check or exclude.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from imaging_cds import __version__
from imaging_cds.deid.profile import KEEP_UID_TAGS, resolve, row_for

BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_BURNED_IN_MODALITIES = frozenset({"US", "IVUS", "ES", "XC", "GM", "SM", "OT", "DOC", "SC"})
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_DUMMY = "ANONYMIZED"
_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
# Never shifted, even with the Modified Dates Option: a birth date (shifted or not, with the shift known for one
# study) narrows down who the patient is; the table empties it (Z) and so do we.
_NOT_SHIFTED = frozenset({0x00100030, 0x00100032})  # Patient's Birth Date, Patient's Birth Time
_DATES_AND_TIMES = frozenset({"DA", "DT", "TM"})
_NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
_BYTES = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DUMMY_BY_VR: dict[str, Any] = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0"}


@dataclass(frozen=True)
class DeidOptions:
    key: bytes  # secret for UID remapping, pseudonyms and date shifts
    dates: str = "shift"  # "shift" or "remove"
    date_shift_days: int | None = None  # a fixed shift; None: per patient, 1 to 3650 days, from the key

    def __post_init__(self) -> None:
        if self.dates not in ("shift", "remove"):
            raise ValueError(f"dates must be shift or remove, got {self.dates!r}")
        if len(self.key) < 16:
            raise ValueError("the de-identification key must be at least 16 bytes")


@dataclass(frozen=True)
class DeidResult:
    dataset: Dataset
    burned_in_text_risk: str  # why the pixels may carry text; empty when nothing suggests it
    date_shift_days: int | None  # None when dates were removed


class Deidentifier:
    def __init__(self, options: DeidOptions) -> None:
        self.options = options

    def uid(self, original: str) -> str:
        """The new UID of ``original``: 2.25 + 128 bits of HMAC, the same for the same original and key."""
        digest = hmac.new(self.options.key, b"uid:" + original.strip().encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def pseudonym(self, patient_id: str) -> str:
        digest = hmac.new(self.options.key, b"patient:" + patient_id.encode(), hashlib.sha256).hexdigest()
        return f"ANON-{digest[:12].upper()}"

    def shift_days(self, patient_id: str) -> int:
        if self.options.date_shift_days is not None:
            return self.options.date_shift_days
        digest = hmac.new(self.options.key, b"dates:" + patient_id.encode(), hashlib.sha256).digest()
        return 1 + int.from_bytes(digest[:4], "big") % 3650

    def deidentify(self, original: Dataset) -> DeidResult:
        ds = _copy(original)
        patient_id = str(original.get("PatientID", "")) or str(original.get("PatientName", ""))
        shift = self.shift_days(patient_id) if self.options.dates == "shift" else None
        risk = burned_in_text_risk(original)
        self._clean(ds, patient_id, shift)
        if getattr(original, "file_meta", None) is not None:
            ds.file_meta = self._meta(original.file_meta)
        ds.PatientIdentityRemoved = "YES"
        # LO: at most 64 characters; the code sequence below names the profile and option in full.
        method = f"imaging-cds {__version__} PS3.15 Basic Profile; "
        ds.DeidentificationMethod = method + ("dates removed" if shift is None else f"dates -{shift} days")
        ds.DeidentificationMethodCodeSequence = Sequence(
            [_code(*BASIC_PROFILE), *([_code(*MODIFIED_DATES)] if shift is not None else [])]
        )
        ds.LongitudinalTemporalInformationModified = "REMOVED" if shift is None else "MODIFIED"
        return DeidResult(ds, risk, shift)

    def _meta(self, meta: FileMetaDataset) -> FileMetaDataset:
        new = FileMetaDataset()
        for element in meta:
            if element.keyword == "MediaStorageSOPInstanceUID":
                new.MediaStorageSOPInstanceUID = pydicom.uid.UID(self.uid(str(element.value)))
            elif element.keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle"):
                continue
            else:
                new.add(element)
        return new

    def _clean(self, ds: Dataset, patient_id: str, shift: int | None) -> None:
        for element in list(ds):
            tag = int(element.tag)
            row = row_for(tag)
            if _outside_profile(tag) or (row is None and tag >> 16 == 0x0010):
                del ds[element.tag]  # private, curves, overlays; the Patient module's attributes the table omits
            elif tag in (_PATIENT_NAME, _PATIENT_ID):
                element.value = self.pseudonym(patient_id)
            elif shift is not None and element.VR in _DATES_AND_TIMES and tag not in _NOT_SHIFTED:
                self._by_vr(element, tag, shift)  # the Modified Dates Option: its column is C for every date and time
            elif row is None:
                self._sweep(element, tag, patient_id, shift)
            else:
                self._apply(ds, element, resolve(row.code), patient_id, shift)

    def _apply(self, ds: Dataset, element: Any, action: str, patient_id: str, shift: int | None) -> None:
        """One action of the table (``profile.resolve``d) on ``element`` of ``ds``."""
        if action == "X":
            del ds[element.tag]
        elif action == "Z":
            element.value = element.empty_value
        elif element.VR == "UI" and action in ("U", "U*", "D"):
            element.value = _each(element.value, self.uid)
        elif action == "K" or element.VR == "SQ":  # K; D and U* on a sequence: its items, cleaned
            self._sweep(element, int(element.tag), patient_id, shift)
        elif action in ("D", "C"):  # C does not occur in the Basic Profile column; a dummy is the safe reading
            element.value = _dummy(element.VR)
        else:  # U or U* on an attribute that is not a UID: what it holds goes
            element.value = element.empty_value

    def _sweep(self, element: Any, tag: int, patient_id: str, shift: int | None) -> None:
        """An attribute kept: a sequence's items cleaned, a value checked by its value representation."""
        if element.VR == "SQ":
            for item in element.value or []:
                self._clean(item, patient_id, shift)
        else:
            self._by_vr(element, tag, shift)

    def _by_vr(self, element: Any, tag: int, shift: int | None) -> None:
        vr = element.VR
        if element.value in (None, "", b""):
            return
        if vr == "PN":
            element.value = ""
        elif vr in ("DA", "DT"):
            element.value = "" if shift is None else _each(element.value, lambda v: _shift(v, vr, shift))
        elif vr == "TM":
            if shift is None:
                element.value = ""
        elif vr == "UI":
            element.value = _each(element.value, lambda v: self._uid_or_keep(tag, v))

    def _uid_or_keep(self, tag: int, value: str) -> str:
        if not value or tag in KEEP_UID_TAGS or value in UID_dictionary:
            return value
        return self.uid(value)


def burned_in_text_risk(ds: Dataset) -> str:
    """Why this image may carry text in its pixels (a name, a date, an ID); empty when nothing suggests it."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES"
    modality = str(ds.get("Modality", "")).upper()
    if modality in _BURNED_IN_MODALITIES:
        return f"modality {modality} often carries burned-in text"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return "a secondary capture (screenshots often show patient data)"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if any(v in ("SECONDARY", "SCREEN SAVE", "SCREENSHOT") for v in image_type):
        return f"image type {'/'.join(image_type)}"
    if str(ds.get("BurnedInAnnotation", "")).upper() != "NO" and modality in ("CR", "DX", "MG", "RF", "XA", "PX"):
        return f"modality {modality} without BurnedInAnnotation NO (projection images often carry labels)"
    return ""


def _outside_profile(tag: int) -> bool:
    """Private attributes, curves (50xx) and overlays (60xx, even groups): removed whole (an overlay's rows and
    origin are of no use without its data, which the table removes)."""
    group = tag >> 16
    return group % 2 == 1 or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def _dummy(vr: str) -> Any:
    """A value of the VR that says nothing (PS3.15 action D)."""
    if vr in _NUMBERS:
        return 0
    if vr in _BYTES:
        return b""
    return _DUMMY_BY_VR.get(vr, _DUMMY)


def _copy(ds: Dataset) -> Dataset:
    new = Dataset()
    for element in ds:
        new.add(pydicom.DataElement(element.tag, element.VR, _deep(element.value)))
    return new


def _deep(value: Any) -> Any:
    if isinstance(value, Sequence):
        return Sequence([_copy(item) for item in value])
    return value


def _each(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [change(str(v)) for v in value]
    return change(str(value))


def _shift(value: str, vr: str, days: int) -> str:
    """A DA (YYYYMMDD) or DT (YYYYMMDDHHMMSS...) shifted back by ``days``; unparseable values are emptied."""
    text = value.strip()
    try:
        date = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    shifted = (date - dt.timedelta(days=days)).strftime("%Y%m%d")
    return shifted if vr == "DA" else shifted + text[8:]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
