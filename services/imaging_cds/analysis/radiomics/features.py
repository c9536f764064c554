"""The IBSI 1 feature registry: every feature this engine computes, its IBSI identifier, name, family and unit.

Results are keyed by a *feature key*: the feature's 4-character IBSI identifier, qualified where IBSI uses one
identifier for several results:

- texture features carry the IBSI identifier of their aggregation method: ``GYBY.ITBB`` is GLCM joint maximum,
  3D, features averaged over directions; ``5QRC.KOBO`` is GLSZM small zone emphasis, 3D;
- intensity-volume histogram features carry their parameter: ``BC2M.V10`` (volume at intensity fraction 0.10),
  ``GBPN.I90`` (intensity at volume fraction 0.90).

Identifiers were checked against the IBSI reference manual (theibsi/ibsi-doc) and the feature name reference of
MIRP (oncoray/mirp, by the IBSI's coordinating author); the aggregation identifiers are the manual's. Where the
manual's web rendering drops an identifier (intensity histogram percentiles, texture features) MIRP's list is used:
10th and 90th discretised intensity percentile are ``GPMT`` and ``OZ0C``, GLSZM small zone emphasis is ``5QRC``
(``9SAK`` is the GLSZM family).

Units are UCUM. ``{I}`` in a unit stands for the image's intensity unit (``[hnsf'U]`` for CT) and is filled in by
:func:`unit_for`; discretised intensities (grey levels) are dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AGGREGATIONS",
    "FAMILIES",
    "FEATURES",
    "Aggregation",
    "FeatureDef",
    "feature_key",
    "unit_for",
]


@dataclass(frozen=True)
class Aggregation:
    """An IBSI texture aggregation method (how matrices from slices and directions are combined)."""

    ibsi_id: str
    dims: str  # "2D", "2.5D" or "3D"
    name: str


# Matrices with directions (GLCM, GLRLM).
_DIRECTIONAL = {
    ("2D", "avg"): Aggregation("BTW3", "2D", "2D, averaged over slices and directions"),
    ("2D", "mrg"): Aggregation("SUJT", "2D", "2D, directions merged, averaged over slices"),
    ("2.5D", "avg"): Aggregation("JJUI", "2.5D", "2.5D, slices merged per direction, averaged over directions"),
    ("2.5D", "mrg"): Aggregation("ZW7Z", "2.5D", "2.5D, slices and directions merged"),
    ("3D", "avg"): Aggregation("ITBB", "3D", "3D, averaged over directions"),
    ("3D", "mrg"): Aggregation("IAZD", "3D", "3D, directions merged"),
}
# Matrices without directions (GLSZM, GLDZM, NGTDM, NGLDM).
_UNDIRECTED = {
    "2D": Aggregation("8QNN", "2D", "2D, averaged over slices"),
    "2.5D": Aggregation("62GR", "2.5D", "2.5D, slices merged"),
    "3D": Aggregation("KOBO", "3D", "3D"),
}
AGGREGATIONS: dict[str, Aggregation] = {a.ibsi_id: a for a in (*_DIRECTIONAL.values(), *_UNDIRECTED.values())}


def directional_aggregation(dims: str, how: str) -> Aggregation:
    return _DIRECTIONAL[(dims, how)]


def undirected_aggregation(dims: str) -> Aggregation:
    return _UNDIRECTED[dims]


@dataclass(frozen=True)
class FeatureDef:
    key: str  # unique result key (see module docstring)
    ibsi_id: str  # the IBSI feature identifier
    name: str  # the IBSI feature name (with parameter or aggregation where the key has one)
    family: str  # one of FAMILIES
    unit: str  # UCUM, with {I} for the intensity unit
    aggregation: Aggregation | None = None


FAMILIES: dict[str, str] = {
    "morphology": "Morphological features",
    "local_intensity": "Local intensity features",
    "statistics": "Intensity-based statistical features",
    "histogram": "Intensity histogram features",
    "ivh": "Intensity-volume histogram features",
    "glcm": "Grey level co-occurrence based features",
    "glrlm": "Grey level run length based features",
    "glszm": "Grey level size zone based features",
    "gldzm": "Grey level distance zone based features",
    "ngtdm": "Neighbourhood grey tone difference based features",
    "ngldm": "Neighbouring grey level dependence based features",
}

# (key, IBSI id, name, unit) per family; texture families are expanded over aggregations below.
_MORPHOLOGY = [
    ("RNU0", "Volume (mesh)", "mm3"),
    ("YEKZ", "Volume (voxel counting)", "mm3"),
    ("C0JK", "Surface area (mesh)", "mm2"),
    ("2PR5", "Surface to volume ratio", "/mm"),
    ("SKGS", "Compactness 1", "1"),
    ("BQWJ", "Compactness 2", "1"),
    ("KRCK", "Spherical disproportion", "1"),
    ("QCFX", "Sphericity", "1"),
    ("25C7", "Asphericity", "1"),
    ("KLMA", "Centre of mass shift", "mm"),
    ("L0JK", "Maximum 3D diameter", "mm"),
    ("TDIC", "Major axis length", "mm"),
    ("P9VJ", "Minor axis length", "mm"),
    ("7J51", "Least axis length", "mm"),
    ("Q3CK", "Elongation", "1"),
    ("N17B", "Flatness", "1"),
    ("PBX1", "Volume density (axis-aligned bounding box)", "1"),
    ("R59B", "Area density (axis-aligned bounding box)", "1"),
    ("6BDE", "Volume density (approximate enclosing ellipsoid)", "1"),
    ("RDD2", "Area density (approximate enclosing ellipsoid)", "1"),
    ("R3ER", "Volume density (convex hull)", "1"),
    ("7T7F", "Area density (convex hull)", "1"),
    ("99N0", "Integrated intensity", "{I}.mm3"),
    ("N365", "Moran's I index", "1"),
    ("NPT7", "Geary's C measure", "1"),
]
_LOCAL_INTENSITY = [
    ("VJGA", "Local intensity peak", "{I}"),
    ("0F91", "Global intensity peak", "{I}"),
]
_STATISTICS = [
    ("Q4LE", "Mean intensity", "{I}"),
    ("ECT3", "Intensity variance", "{I}2"),
    ("KE2A", "Intensity skewness", "1"),
    ("IPH6", "(Excess) intensity kurtosis", "1"),
    ("Y12H", "Median intensity", "{I}"),
    ("1GSF", "Minimum intensity", "{I}"),
    ("QG58", "10th intensity percentile", "{I}"),
    ("8DWT", "90th intensity percentile", "{I}"),
    ("84IY", "Maximum intensity", "{I}"),
    ("SALO", "Intensity interquartile range", "{I}"),
    ("2OJQ", "Intensity range", "{I}"),
    ("4FUA", "Intensity-based mean absolute deviation", "{I}"),
    ("1128", "Intensity-based robust mean absolute deviation", "{I}"),
    ("N72L", "Intensity-based median absolute deviation", "{I}"),
    ("7TET", "Intensity-based coefficient of variation", "1"),
    ("9S40", "Intensity-based quartile coefficient of dispersion", "1"),
    ("N8CA", "Intensity-based energy", "{I}2"),
    ("5ZWQ", "Root mean square intensity", "{I}"),
]
_HISTOGRAM = [
    ("X6K6", "Mean discretised intensity", "1"),
    ("CH89", "Discretised intensity variance", "1"),
    ("88K1", "Discretised intensity skewness", "1"),
    ("C3I7", "(Excess) discretised intensity kurtosis", "1"),
    ("WIFQ", "Median discretised intensity", "1"),
    ("1PR8", "Minimum discretised intensity", "1"),
    ("GPMT", "10th discretised intensity percentile", "1"),
    ("OZ0C", "90th discretised intensity percentile", "1"),
    ("3NCY", "Maximum discretised intensity", "1"),
    ("AMMC", "Intensity histogram mode", "1"),
    ("WR0O", "Discretised intensity interquartile range", "1"),
    ("5Z3W", "Discretised intensity range", "1"),
    ("D2ZX", "Intensity histogram mean absolute deviation", "1"),
    ("WRZB", "Intensity histogram robust mean absolute deviation", "1"),
    ("4RNL", "Intensity histogram median absolute deviation", "1"),
    ("CWYJ", "Intensity histogram coefficient of variation", "1"),
    ("SLWD", "Intensity histogram quartile coefficient of dispersion", "1"),
    ("TLU2", "Discretised intensity entropy", "1"),
    ("BJ5W", "Discretised intensity uniformity", "1"),
    ("12CE", "Maximum histogram gradient", "1"),
    ("8E6O", "Maximum histogram gradient intensity", "1"),
    ("VQB3", "Minimum histogram gradient", "1"),
    ("RHQZ", "Minimum histogram gradient intensity", "1"),
]
# "{V}" is the IVH intensity unit: the image's when the IVH is not discretised or uses a fixed bin size, else 1.
_IVH = [
    ("BC2M.V10", "Volume at intensity fraction 0.10", "1"),
    ("BC2M.V90", "Volume at intensity fraction 0.90", "1"),
    ("GBPN.I10", "Intensity at volume fraction 0.10", "{V}"),
    ("GBPN.I90", "Intensity at volume fraction 0.90", "{V}"),
    ("DDTU", "Volume fraction difference between intensity fractions 0.10 and 0.90", "1"),
    ("CNV2", "Intensity fraction difference between volume fractions 0.10 and 0.90", "{V}"),
]
GLCM = [
    ("GYBY", "Joint maximum"),
    ("60VM", "Joint average"),
    ("UR99", "Joint variance"),
    ("TU9B", "Joint entropy"),
    ("TF7R", "Difference average"),
    ("D3YU", "Difference variance"),
    ("NTRS", "Difference entropy"),
    ("ZGXS", "Sum average"),
    ("OEEB", "Sum variance"),
    ("P6QZ", "Sum entropy"),
    ("8ZQL", "Angular second moment"),
    ("ACUI", "Contrast"),
    ("8S9J", "Dissimilarity"),
    ("IB1Z", "Inverse difference"),
    ("NDRX", "Normalised inverse difference"),
    ("WF0Z", "Inverse difference moment"),
    ("1QCO", "Normalised inverse difference moment"),
    ("E8JP", "Inverse variance"),
    ("NI2N", "Correlation"),
    ("QWB0", "Autocorrelation"),
    ("DG8W", "Cluster tendency"),
    ("7NFM", "Cluster shade"),
    ("AE86", "Cluster prominence"),
    ("R8DG", "Information correlation 1"),
    ("JN9H", "Information correlation 2"),
]
GLRLM = [
    ("22OV", "Short runs emphasis"),
    ("W4KF", "Long runs emphasis"),
    ("V3SW", "Low grey level run emphasis"),
    ("G3QZ", "High grey level run emphasis"),
    ("HTZT", "Short run low grey level emphasis"),
    ("GD3A", "Short run high grey level emphasis"),
    ("IVPO", "Long run low grey level emphasis"),
    ("3KUM", "Long run high grey level emphasis"),
    ("R5YN", "Grey level non-uniformity"),
    ("OVBL", "Normalised grey level non-uniformity"),
    ("W92Y", "Run length non-uniformity"),
    ("IC23", "Normalised run length non-uniformity"),
    ("9ZK5", "Run percentage"),
    ("8CE5", "Grey level variance"),
    ("SXLW", "Run length variance"),
    ("HJ9O", "Run entropy"),
]
GLSZM = [
    ("5QRC", "Small zone emphasis"),
    ("48P8", "Large zone emphasis"),
    ("XMSY", "Low grey level zone emphasis"),
    ("5GN9", "High grey level zone emphasis"),
    ("5RAI", "Small zone low grey level emphasis"),
    ("HW1V", "Small zone high grey level emphasis"),
    ("YH51", "Large zone low grey level emphasis"),
    ("J17V", "Large zone high grey level emphasis"),
    ("JNSA", "Grey level non-uniformity"),
    ("Y1RO", "Normalised grey level non-uniformity"),
    ("4JP3", "Zone size non-uniformity"),
    ("VB3A", "Normalised zone size non-uniformity"),
    ("P30P", "Zone percentage"),
    ("BYLV", "Grey level variance"),
    ("3NSA", "Zone size variance"),
    ("GU8N", "Zone size entropy"),
]
GLDZM = [
    ("0GBI", "Small distance emphasis"),
    ("MB4I", "Large distance emphasis"),
    ("S1RA", "Low grey level zone emphasis"),
    ("K26C", "High grey level zone emphasis"),
    ("RUVG", "Small distance low grey level emphasis"),
    ("DKNJ", "Small distance high grey level emphasis"),
    ("A7WM", "Large distance low grey level emphasis"),
    ("KLTH", "Large distance high grey level emphasis"),
    ("VFT7", "Grey level non-uniformity"),
    ("7HP3", "Normalised grey level non-uniformity"),
    ("V294", "Zone distance non-uniformity"),
    ("IATH", "Normalised zone distance non-uniformity"),
    ("VIWW", "Zone percentage"),
    ("QK93", "Grey level variance"),
    ("7WT1", "Zone distance variance"),
    ("GBDU", "Zone distance entropy"),
]
NGTDM = [
    ("QCDE", "Coarseness"),
    ("65HE", "Contrast"),
    ("NQ30", "Busyness"),
    ("HDEZ", "Complexity"),
    ("1X9X", "Strength"),
]
NGLDM = [
    ("SODN", "Low dependence emphasis"),
    ("IMOQ", "High dependence emphasis"),
    ("TL9H", "Low grey level count emphasis"),
    ("OAE7", "High grey level count emphasis"),
    ("EQ3F", "Low dependence low grey level emphasis"),
    ("JA6D", "Low dependence high grey level emphasis"),
    ("NBZI", "High dependence low grey level emphasis"),
    ("9QMG", "High dependence high grey level emphasis"),
    ("FP8K", "Grey level non-uniformity"),
    ("5SPA", "Normalised grey level non-uniformity"),
    ("Z87G", "Dependence count non-uniformity"),
    ("OKJI", "Normalised dependence count non-uniformity"),
    ("6XV8", "Dependence count percentage"),
    ("1PFV", "Grey level variance"),
    ("DNX2", "Dependence count variance"),
    ("FCBV", "Dependence count entropy"),
    ("CAS9", "Dependence count energy"),
]
TEXTURE: dict[str, list[tuple[str, str]]] = {
    "glcm": GLCM,
    "glrlm": GLRLM,
    "glszm": GLSZM,
    "gldzm": GLDZM,
    "ngtdm": NGTDM,
    "ngldm": NGLDM,
}
DIRECTIONAL_FAMILIES = ("glcm", "glrlm")


def feature_key(ibsi_id: str, aggregation: Aggregation | None = None) -> str:
    return f"{ibsi_id}.{aggregation.ibsi_id}" if aggregation else ibsi_id


def _build() -> dict[str, FeatureDef]:
    out: dict[str, FeatureDef] = {}
    plain = {
        "morphology": _MORPHOLOGY,
        "local_intensity": _LOCAL_INTENSITY,
        "statistics": _STATISTICS,
        "histogram": _HISTOGRAM,
        "ivh": _IVH,
    }
    for family, rows in plain.items():
        for key, name, unit in rows:
            out[key] = FeatureDef(key, key.split(".")[0], name, family, unit)
    for family, trows in TEXTURE.items():
        aggs = list(_DIRECTIONAL.values()) if family in DIRECTIONAL_FAMILIES else list(_UNDIRECTED.values())
        for agg in aggs:
            for ibsi_id, name in trows:
                key = feature_key(ibsi_id, agg)
                out[key] = FeatureDef(key, ibsi_id, f"{name} ({agg.name})", family, "1", agg)
    return out


FEATURES: dict[str, FeatureDef] = _build()


def unit_for(key: str, intensity_unit: str = "[hnsf'U]", ivh_unit: str | None = None) -> str:
    """The UCUM unit of a feature for an image whose intensities are in ``intensity_unit``."""
    unit = FEATURES[key].unit
    if unit == "1":
        return unit
    return unit.replace("{V}", ivh_unit if ivh_unit is not None else intensity_unit).replace("{I}", intensity_unit)
