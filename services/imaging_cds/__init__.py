"""imaging-cds: imaging AI findings into the EHR as FHIR R4 DiagnosticReports."""

__version__ = "0.1.0"
