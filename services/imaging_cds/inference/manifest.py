"""Model manifests: what a model in ``triton_repo/`` needs and what its outputs mean.

A manifest (``triton_repo/<model>/manifest.yaml``) sits beside the model's ``config.pbtxt`` and ``1/model.onnx``, so
adding a model is a new folder, not a code change. It says which series the model accepts, how the worker feeds
it, and which result codings its measurements carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest is missing or malformed; names the file and the field."""


@dataclass(frozen=True)
class SeriesRule:
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    min_instances: int
    max_slice_spacing_mm: float

    def describe(self) -> str:
        return (
            f"modality {'/'.join(self.modalities)}, body part {'/'.join(self.body_parts)} or unstated, "
            f"at least {self.min_instances} images, slices at most {self.max_slice_spacing_mm:g} mm apart"
        )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype: INT16, UINT8, FP32...


@dataclass(frozen=True)
class ModelManifest:
    name: str
    title: str
    version: str  # the algorithm's version (Device.version); a change makes new results amendments
    triton_model: str
    triton_version: str
    task: str
    input: TensorSpec
    output: TensorSpec
    max_batch: int
    selection: SeriesRule
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / self.triton_version / "model.onnx"


def load_manifest(model_dir: Path) -> ModelManifest:
    path = model_dir / "manifest.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ManifestError(f"{path}: no manifest; every model folder needs manifest.yaml") from err
    try:
        return _parse(raw, model_dir)
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"{path}: {err!r}; see triton_repo/README.md for the manifest fields") from err


def load_manifests(repository: Path) -> list[ModelManifest]:
    return [load_manifest(d) for d in sorted(repository.iterdir()) if (d / "manifest.yaml").exists()]


def _parse(raw: dict[str, Any], model_dir: Path) -> ModelManifest:
    triton = raw["triton"]
    sel = raw["selection"]
    return ModelManifest(
        name=str(raw["name"]),
        title=str(raw["title"]),
        version=str(raw["version"]),
        triton_model=str(triton["model_name"]),
        triton_version=str(triton["model_version"]),
        task=str(raw["task"]),
        input=TensorSpec(**triton["input"]),
        output=TensorSpec(**triton["output"]),
        max_batch=int(triton["max_batch_size"]),
        selection=SeriesRule(
            modalities=tuple(m.upper() for m in sel["modalities"]),
            body_parts=tuple(b.upper() for b in sel["body_parts"]),
            min_instances=int(sel["min_instances"]),
            max_slice_spacing_mm=float(sel["max_slice_spacing_mm"]),
        ),
        path=model_dir,
    )
