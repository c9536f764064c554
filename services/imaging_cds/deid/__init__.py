"""De-identification for research data sets: DICOM PS3.15 Basic Application Level Confidentiality Profile."""
