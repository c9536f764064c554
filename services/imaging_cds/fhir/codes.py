"""Coding tables: every code system, code and unit the FHIR results use, in one place.

Where no standard code exists for a quantitative imaging measure (no LOINC or RadElement code covers LAA-950 or
P15 lung density today), we use the project's own code system, ``MEASURE_SYSTEM``, rather than borrow a code that
means something else. Standard codes are used where one fits exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"
URN_IETF_RFC_3986 = "urn:ietf:rfc:3986"
MEASURE_SYSTEM = "https://github.com/imaging-cds/imaging-cds/fhir/CodeSystem/quantitative-imaging"
DEVICE_TYPE_SYSTEM = "https://github.com/imaging-cds/imaging-cds/fhir/CodeSystem/device-type"
# Image Biomarker Standardisation Initiative (IBSI 1): feature and aggregation identifiers (4 characters). The IBSI
# publishes no FHIR code system; this is the URL of its site for the IBSI 1 reference manual.
IBSI = "https://theibsi.github.io/ibsi1/"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# Extension on an Observation component: the IBSI texture aggregation method the feature was computed with.
IBSI_AGGREGATION_EXTENSION = "https://github.com/imaging-cds/imaging-cds/fhir/StructureDefinition/ibsi-aggregation"


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self, text: str | None = None) -> dict[str, object]:
        return {"coding": [self.coding()], "text": text or self.display}


@dataclass(frozen=True)
class Unit:
    code: str  # UCUM
    display: str


REPORT_CODE = Code(LOINC, "18748-4", "Diagnostic imaging study")
CATEGORY_RADIOLOGY = Code(LOINC, "LP29684-5", "Radiology")
CATEGORY_RAD = Code(V2_0074, "RAD", "Radiology")
CATEGORY_IMAGING = Code(OBSERVATION_CATEGORY, "imaging", "Imaging")
AI_ASSERTED = Code(V3_OBSERVATION_VALUE, "AIAST", "Artificial Intelligence asserted")
MEASUREMENT_METHOD = Code(SNOMED, "370129005", "Measurement method")
LUNG_STRUCTURE = Code(SNOMED, "39607008", "Lung structure")
PULMONARY_EMPHYSEMA = Code(SNOMED, "87433001", "Pulmonary emphysema")
INTERPRETATION_HIGH = Code(V3_INTERPRETATION, "H", "High")
INTERPRETATION_NORMAL = Code(V3_INTERPRETATION, "N", "Normal")
DEVICE_TYPE_AI = Code(DEVICE_TYPE_SYSTEM, "ai-algorithm", "Image analysis algorithm")
RADIOMICS_FEATURES = Code(MEASURE_SYSTEM, "ibsi-radiomics", "Radiomics features of a region (IBSI 1)")
NOT_A_NUMBER = Code(DATA_ABSENT_REASON, "not-a-number", "Not a Number (NaN)")

MILLILITRE = Unit("mL", "mL")
PERCENT = Unit("%", "%")
HOUNSFIELD = Unit("[hnsf'U]", "HU")


@dataclass(frozen=True)
class Measure:
    """One quantitative result: its code, unit and how many decimals the chart shows."""

    key: str  # the finding key in identifiers; stable across versions
    code: Code
    unit: Unit
    decimals: int


LUNG_VOLUME = Measure("lung-volume", Code(MEASURE_SYSTEM, "lung-volume", "Total lung volume on CT"), MILLILITRE, 0)
LAA950 = Measure(
    "laa-950",
    Code(MEASURE_SYSTEM, "laa-950", "Lung low-attenuation area below -950 HU (LAA-950), percent of lung volume"),
    PERCENT,
    1,
)
MEAN_LUNG_DENSITY = Measure(
    "mean-lung-density", Code(MEASURE_SYSTEM, "mean-lung-density", "Mean lung density on CT"), HOUNSFIELD, 0
)
P15_DENSITY = Measure(
    "p15-lung-density",
    Code(MEASURE_SYSTEM, "p15-lung-density", "15th percentile lung density on CT (Perc15)"),
    HOUNSFIELD,
    0,
)

# LAA-950 at or above 5 % of lung volume is the usual threshold for CT emphysema in COPD cohorts (COPDGene).
LAA950_EMPHYSEMA_THRESHOLD_PERCENT = 5.0

# -- Findings with a size and a location (Observation.component), report versions, provenance --------------------
# Lung zones are thirds of the lungs' craniocaudal extent, not anatomical lobes: no SNOMED CT or RadLex concept means
# exactly that, so they are the project's own codes.
LUNG_ZONE_SYSTEM = "https://github.com/imaging-cds/imaging-cds/fhir/CodeSystem/lung-zone"
# meta.tag on a DiagnosticReport: "<model>@<version>" that wrote it. Read back to tell a replay (same version: nothing
# to write) from a re-run with a new model version (an amendment).
RESULT_VERSION_SYSTEM = "https://github.com/imaging-cds/imaging-cds/fhir/CodeSystem/result-version"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

PRESENT = Code(SNOMED, "52101004", "Present")
ABSENT = Code(SNOMED, "2667000", "Absent")
FINDING_SITE = Code(SNOMED, "363698007", "Finding site")
LATERALITY = Code(SNOMED, "272741003", "Laterality")
RIGHT = Code(SNOMED, "24028007", "Right")
LEFT = Code(SNOMED, "7771000", "Left")
RIGHT_AND_LEFT = Code(SNOMED, "51440002", "Right and left")
INTERPRETATION_ABNORMAL = Code(V3_INTERPRETATION, "A", "Abnormal")
LAA950_VOLUME = Code(MEASURE_SYSTEM, "laa-950-volume", "Volume of lung below -950 HU (LAA-950 volume)")
UPPER_ZONE = Code(LUNG_ZONE_SYSTEM, "upper", "Upper lung zone predominant")
MIDDLE_ZONE = Code(LUNG_ZONE_SYSTEM, "middle", "Middle lung zone predominant")
LOWER_ZONE = Code(LUNG_ZONE_SYSTEM, "lower", "Lower lung zone predominant")
NO_ZONE_PREDOMINANCE = Code(LUNG_ZONE_SYSTEM, "diffuse", "No zonal predominance")
OPERATION_CREATE = Code(V3_DATA_OPERATION, "CREATE", "create")
OPERATION_UPDATE = Code(V3_DATA_OPERATION, "UPDATE", "revise")
ASSEMBLER = Code(PROVENANCE_PARTICIPANT_TYPE, "assembler", "Assembler")

# The finding keys in identifiers (stable across model versions, like Measure.key).
EMPHYSEMA_FINDING_KEY = "emphysema"

# -- Pulmonary nodules (computer-aided detection) ---------------------------------------------------------------------
# The finding's own codes come from the model's manifest (detection.codes: RadElement, RadLex, SNOMED CT); these are
# its components. Diameter: SNOMED CT qualifier "Diameter" (as in DICOM CID 3423). No standard code names a detection
# model's probability or a point in DICOM patient coordinates, so those are the project's own.
DIAMETER = Code(SNOMED, "81827009", "Diameter")
DETECTION_PROBABILITY = Code(MEASURE_SYSTEM, "detection-probability", "Detection probability (CAD model output)")
CENTRE_LPS_X = Code(MEASURE_SYSTEM, "centre-lps-x", "Centre, DICOM patient x (towards patient's left)")
CENTRE_LPS_Y = Code(MEASURE_SYSTEM, "centre-lps-y", "Centre, DICOM patient y (towards posterior)")
CENTRE_LPS_Z = Code(MEASURE_SYSTEM, "centre-lps-z", "Centre, DICOM patient z (towards head)")
MILLIMETRE = Unit("mm", "mm")
PROBABILITY = Unit("1", "probability")
NODULES_FINDING_KEY = "pulmonary-nodules"
"""Key of the single 'no nodule found' finding; each nodule found is ``nodule-<rank>`` (most probable first)."""

# -- Segmented regions (a segmentation model's label map, charted from its manifest) ---------------------------------
# Each structure is one finding (its anatomy code from the manifest, Present or Absent) whose components are what the
# manifest's ``measurements`` ask for, coded as DICOM codes them for a region of interest: Volume from CID 7472
# (Volume Measurement), Mean and Standard Deviation from CID 7464 (General Region of Interest Measurement Modifier),
# both SNOMED CT; the unit says what is averaged (CT numbers, HU).


@dataclass(frozen=True)
class RegionMeasure:
    """How one measurement of a segmented region is charted: its component code, unit and decimals."""

    code: Code
    unit: Unit
    decimals: int


REGION_MEASURES = {
    "volume": RegionMeasure(Code(SNOMED, "118565006", "Volume"), MILLILITRE, 1),
    "mean": RegionMeasure(Code(SNOMED, "373098007", "Mean"), HOUNSFIELD, 0),
    "standard_deviation": RegionMeasure(Code(SNOMED, "386136009", "Standard Deviation"), HOUNSFIELD, 0),
}
"""Keyed by the names a manifest uses (``imaging_cds.inference.manifest.REGION_MEASUREMENTS``)."""
