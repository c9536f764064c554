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
