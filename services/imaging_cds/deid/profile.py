"""The DICOM PS3.15 Basic Application Level Confidentiality Profile (Annex E, Table E.1-1), as data.

``e1_1.csv`` beside this module is the table (edition 2026c), one row per attribute: tag, attribute name and the
Basic Profile action code; its header says where the transcription comes from. The codes (PS3.15 E.3.1):

- ``X`` remove; ``Z`` a zero-length value (or a dummy); ``D`` a dummy value of the attribute's VR; ``K`` keep;
  ``C`` clean; ``U`` a new UID, mapped consistently across every instance it appears in.
- Compound codes leave the choice to the attribute's Type in the IOD: ``X/Z`` (removed where optional, emptied where
  Type 2), ``X/D``, ``Z/D``, ``X/Z/D``, and ``X/Z/U*`` (a sequence whose referenced UIDs are replaced). We do not
  look the IOD up: ``resolve`` keeps the attribute where the code allows it, with the value that says least (Z
  before D), so a Type 1 or 2 attribute is never dropped from the object; ``X/Z/U*`` cleans the sequence's items.

``deidentify`` also applies, beyond the table: private attributes, overlays and curves removed (the profile's
rows for repeating groups, and the profile's rule for private attributes without the Retain Safe Private Option);
the Retain Longitudinal Temporal Information with Modified Dates Option (its column marks every date and time
attribute of the table C: dates are shifted); and a sweep by value representation so that an attribute the table
misses cannot carry an identity out (every PN emptied, DA/DT shifted or emptied, UIDs not registered remapped).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

ACTION_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1: ``tag`` with its wildcard hex digits zero, ``mask`` with 1 bits where it must match."""

    tag: int
    mask: int
    name: str
    code: str  # the Basic Profile column, as in the table

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag


def parse_table(text: str) -> tuple[ProfileRow, ...]:
    """Rows of the CSV (lines starting with # are comments); raises ValueError on a malformed row."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        spec, name, code = record["tag"].strip().lower(), record["name"].strip(), record["basic_profile"].strip()
        if len(spec) != 8 or any(c not in "0123456789abcdefx" for c in spec) or code not in ACTION_CODES:
            raise ValueError(f"Table E.1-1 row {record!r}: expected an 8-digit tag and an action code")
        tag = int(spec.replace("x", "0"), 16)
        mask = int("".join("0" if c == "x" else "f" for c in spec), 16)
        rows.append(ProfileRow(tag, mask, name, code))
    return tuple(rows)


def resolve(code: str) -> str:
    """The one action taken for a table code: the code itself, or for a compound code Z where it is allowed, else D;
    ``X/Z/U*`` is ``U*`` (keep the sequence, clean its items, replace the UIDs they reference)."""
    options = code.split("/")
    if "U*" in options:
        return "U*"
    if len(options) == 1:
        return code
    return "Z" if "Z" in options else "D"


TABLE: tuple[ProfileRow, ...] = parse_table(resources.files(__package__).joinpath("e1_1.csv").read_text("utf-8"))
_EXACT: dict[int, ProfileRow] = {row.tag: row for row in TABLE if row.mask == 0xFFFFFFFF}
_REPEATING: tuple[ProfileRow, ...] = tuple(row for row in TABLE if row.mask != 0xFFFFFFFF)


def row_for(tag: int) -> ProfileRow | None:
    """The table's row for ``tag`` (an exact tag first, then repeating groups such as 60xx,3000); None if none."""
    row = _EXACT.get(tag)
    if row is not None:
        return row
    return next((r for r in _REPEATING if r.matches(tag)), None)


# Registered UIDs a dataset refers to that identify nothing (SOP classes, transfer syntaxes, coding schemes...):
# a UI value found in pydicom's UID dictionary is kept as it is.
KEEP_UID_TAGS = frozenset(
    {
        0x00020002,  # Media Storage SOP Class UID
        0x00020010,  # Transfer Syntax UID
        0x00020012,  # Implementation Class UID
        0x00080016,  # SOP Class UID
        0x00080062,  # SOPs Classes in Study
        0x00081150,  # Referenced SOP Class UID
        0x0008010C,  # Coding Scheme UID
        0x00080118,  # Mapping Resource UID
    }
)
