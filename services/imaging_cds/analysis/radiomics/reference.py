"""IBSI reference values (the CSV layout of ``shared/ibsi``) and the rule for matching a computed value to one.

Each CSV row names a feature by IBSI identifier, the data set (``dig. phantom``, ``config. A``...) and, for
texture, the aggregation in words; :func:`load_reference_values` turns that into this engine's feature keys.
A row with a tolerance matches when ``|value - reference| <= tolerance``; without one, when the value agrees to
the reference's printed precision (the manual prints three significant digits: half a unit in the third).

``shared/ibsi`` codes three features with a wrong identifier (the web rendering of the manual drops theirs, and the
neighbouring identifier was taken): the 10th discretised intensity percentile as ``1PR8`` (the minimum's), the 90th
as ``GPMT`` (the 10th's) and GLSZM small zone emphasis as ``9SAK`` (the GLSZM family's). Rows are matched to
features by identifier and feature name, so those rows are read as ``GPMT``, ``OZ0C`` and ``5QRC``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from imaging_cds.analysis.radiomics.features import FEATURES

__all__ = ["ReferenceValue", "load_reference_values", "matches"]

AGGREGATION_WORDS = {
    "2D, averaged": "BTW3",
    "2D, slice-merged": "SUJT",
    "2.5D, direction-merged": "JJUI",
    "2.5D, merged": "ZW7Z",
    "3D, averaged": "ITBB",
    "3D, merged": "IAZD",
    "2D": "8QNN",
    "2.5D": "62GR",
    "3D": "KOBO",
}
# IBSI identifiers that the manual uses for more than one result, in the order the manual lists them.
_REPEATED = {"BC2M": ["BC2M.V10", "BC2M.V90"], "GBPN": ["GBPN.I10", "GBPN.I90"]}
# (identifier in the file, feature name) -> the feature's IBSI identifier, for rows coded with a wrong one.
_MISCODED = {
    ("1PR8", "10th discretised intensity percentile"): "GPMT",
    ("GPMT", "90th discretised intensity percentile"): "OZ0C",
    ("9SAK", "Small zone emphasis"): "5QRC",
}


@dataclass(frozen=True)
class ReferenceValue:
    key: str  # feature key, as computed by the engine
    data: str  # "dig. phantom", "config. A", ...
    feature: str  # the manual's feature name
    family: str
    value: float
    tolerance: float | None  # None: match to printed precision
    consensus: str

    @property
    def allowed(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        if self.value == 0:
            return 5e-4
        return 0.5 * 10.0 ** (math.floor(math.log10(abs(self.value))) - 2)

    def matched_by(self, value: float) -> bool:
        return matches(value, self.value, self.allowed)


def matches(value: float, reference: float, allowed: float) -> bool:
    if not math.isfinite(value):
        return False
    return abs(value - reference) <= allowed * (1.0 + 1e-9) + 1e-12


def load_reference_values(path: Path) -> list[ReferenceValue]:
    """Rows with a reference value; a row the manual leaves without one (no consensus) is left out.

    Lines starting with ``#`` before the header (where the file says where its values come from) are skipped.
    """
    out: list[ReferenceValue] = []
    seen: dict[tuple[str, str], int] = defaultdict(int)
    with path.open(newline="", encoding="utf-8") as fh:
        lines = (line for line in fh if not line.startswith("#"))
        for row in csv.DictReader(lines):
            feature = row["feature"].replace("\\ :sup:`th`", "th").strip()
            ibsi_id = row["ibsi_id"].strip()
            ibsi_id = _MISCODED.get((ibsi_id, feature), ibsi_id)
            data = row["data"].strip()
            agg = row["aggregation"].strip()
            if agg:
                key = f"{ibsi_id}.{AGGREGATION_WORDS[agg]}"
            elif ibsi_id in _REPEATED:
                n = seen[(data, ibsi_id)]
                seen[(data, ibsi_id)] += 1
                key = _REPEATED[ibsi_id][n]
            else:
                key = ibsi_id
            if key not in FEATURES:
                raise ValueError(f"{path}: {ibsi_id} ({agg or 'no aggregation'}) is not a feature this engine knows")
            if not row["value"].strip():
                continue
            tol = row["tolerance"].strip()
            out.append(
                ReferenceValue(
                    key=key,
                    data=data,
                    feature=feature,
                    family=row["family"],
                    value=float(row["value"]),
                    tolerance=float(tol) if tol else None,
                    consensus=row["consensus"],
                )
            )
    return out
