"""The models this deployment runs: the repository's, or those the settings name, each one the worker can chart.

The worker runs them, ``imaging-cds analyze`` runs them locally, and the gateway's ``ListModels`` lists them, all
from the same settings (``IMAGING_CDS_MODEL_REPOSITORY``, ``IMAGING_CDS_MODELS``).
"""

from __future__ import annotations

from pathlib import Path

from imaging_cds.analysis.findings import post_processing_problem
from imaging_cds.config import Settings
from imaging_cds.inference.manifest import ManifestError, ModelManifest, load_manifest, load_manifests


def configured_models(settings: Settings, names: list[str] | None = None) -> list[ModelManifest]:
    """``names`` (``--model``), else IMAGING_CDS_MODELS (comma-separated), else every model folder."""
    wanted = names or [n.strip() for n in settings.models.split(",") if n.strip()]
    return runnable_models(settings.model_repository, wanted)


def runnable_models(repository: Path, names: list[str]) -> list[ModelManifest]:
    """The named models of ``repository`` (none named: all of them), each one the worker can chart; a ManifestError
    naming every problem otherwise, so nothing starts only to fail every study."""
    models = [load_manifest(repository / name) for name in names] if names else load_manifests(repository)
    if not models:
        raise ManifestError(f"{repository}: no model folders (each needs manifest.yaml)")
    problems = [p for p in map(post_processing_problem, models) if p is not None]
    if problems:  # `imaging-cds models check` says the same
        raise ManifestError("; ".join(problems))
    return models
