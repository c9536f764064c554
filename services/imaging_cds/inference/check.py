"""Check a model folder before Triton and the worker meet it: manifest, ``config.pbtxt`` and ONNX file agree.

A model in ``triton_repo/`` is three descriptions of one thing: ``manifest.yaml`` (what imaging-cds sends and
reads), ``config.pbtxt`` (what Triton serves) and ``<version>/model.onnx`` (what actually runs). :func:`check_model`
loads all three and lists every disagreement in words that name the file and the field, so a hospital adding its own
model learns what to fix from ``imaging-cds models check`` instead of from a failed job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imaging_cds.inference.manifest import ManifestError, ModelManifest, load_manifest

# KServe v2 datatype (manifest) -> Triton config data_type and the onnxruntime type string of the same tensor.
KSERVE_TO_CONFIG = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
KSERVE_TO_ORT = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}
ONNX_BACKENDS = ("onnxruntime",)
ONNX_PLATFORMS = ("onnxruntime_onnx",)


@dataclass(frozen=True)
class ModelCheck:
    """The outcome for one model folder: ``problems`` empty means Triton and the worker can both use it."""

    folder: Path
    manifest: ModelManifest | None
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def model_folders(repository: Path) -> list[Path]:
    """Every folder of the repository that is meant to be a model (has a manifest or a Triton config)."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a folder")
    return sorted(
        d
        for d in repository.iterdir()
        if d.is_dir() and ((d / "manifest.yaml").exists() or (d / "config.pbtxt").exists())
    )


def check_repository(repository: Path) -> list[ModelCheck]:
    return [check_model(d) for d in model_folders(repository)]


def check_model(folder: Path) -> ModelCheck:
    try:
        manifest = load_manifest(folder)
    except ManifestError as err:
        return ModelCheck(folder, None, (str(err),))
    from imaging_cds.analysis.findings import post_processing_problem  # the worker's side: can it chart the output?

    problems, dims = _check_config(folder, manifest)
    problems += _check_onnx(manifest, dims)
    problems += _check_label_map(folder, manifest, dims)
    unknown = post_processing_problem(manifest)
    if unknown is not None:
        problems.append(unknown)
    return ModelCheck(folder, manifest, tuple(problems))


def _check_label_map(folder: Path, m: ModelManifest, dims: dict[str, list[int]]) -> list[str]:
    """A segmentation model's output is a label per input voxel: config.pbtxt must give it the input's dims."""
    given, answer = dims.get(m.input.name), dims.get(m.output.name)
    if m.segmentation is None or given is None or answer is None:
        return []
    if len(answer) == len(given) and all(a == g or -1 in (a, g) for a, g in zip(answer, given, strict=True)):
        return []
    return [
        f"{folder / 'config.pbtxt'}: output {m.output.name!r} has dims {answer}, input {m.input.name!r} {given}; "
        "a segmentation model's label map has one label per input voxel (the manifest's segmentation section)"
    ]


def _check_config(folder: Path, m: ModelManifest) -> tuple[list[str], dict[str, list[int]]]:
    """Problems of config.pbtxt against the manifest, and the declared dims of each tensor (batch axis excluded)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = folder / "config.pbtxt"
    where = f"{path}"
    try:
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
    except FileNotFoundError:
        return [f"{where}: missing; Triton needs a config.pbtxt beside manifest.yaml"], {}
    except text_format.ParseError as err:
        return [f"{where}: not a valid Triton model configuration ({err})"], {}
    problems = []
    if config.name and config.name != folder.name:
        problems.append(f"{where}: name {config.name!r} differs from its folder {folder.name!r} (Triton refuses it)")
    if m.triton_model != folder.name:
        problems.append(
            f"{folder / 'manifest.yaml'}: triton.model_name {m.triton_model!r} is not the folder name {folder.name!r}"
        )
    if config.backend not in ONNX_BACKENDS and config.platform not in ONNX_PLATFORMS:
        problems.append(
            f"{where}: backend {config.backend!r} / platform {config.platform!r}; imaging-cds runs ONNX models "
            f'(backend: "onnxruntime" or platform: "onnxruntime_onnx") so onnxruntime can run the same file'
        )
    if config.max_batch_size != m.max_batch:
        problems.append(
            f"{where}: max_batch_size {config.max_batch_size} but the manifest's triton.max_batch_size is "
            f"{m.max_batch}; they must match"
        )
    if m.max_batch < 1:
        problems.append(f"{folder / 'manifest.yaml'}: triton.max_batch_size must be at least 1 (slices per request)")
    for role, spec, tensors in (("input", m.input, config.input), ("output", m.output, config.output)):
        declared = {t.name: t for t in tensors}
        tensor = declared.get(spec.name)
        if tensor is None:
            problems.append(
                f"{where}: no {role} {spec.name!r} (the manifest's triton.{role}); it declares {sorted(declared)}"
            )
            continue
        expected = KSERVE_TO_CONFIG.get(spec.datatype)
        actual = mc.DataType.Name(tensor.data_type)
        if expected is None:
            problems.append(
                f"{folder / 'manifest.yaml'}: triton.{role}.datatype {spec.datatype!r} is not a KServe v2 datatype "
                f"({', '.join(KSERVE_TO_CONFIG)})"
            )
        elif actual != expected:
            problems.append(
                f"{where}: {role} {spec.name!r} is {actual}, the manifest says {spec.datatype} ({expected})"
            )
    if not config.HasField("dynamic_batching"):
        problems.append(f"{where}: no dynamic_batching block; concurrent jobs would not be batched together")
    problems += _check_version_policy(folder, m, config)
    dims = {t.name: list(t.dims) for t in [*config.input, *config.output]}
    return problems, dims


def _check_version_policy(folder: Path, m: ModelManifest, config: object) -> list[str]:
    """The manifest's pinned version must be a version Triton loads under the config's version_policy."""
    versions = sorted(int(d.name) for d in folder.iterdir() if d.is_dir() and d.name.isdigit())
    if not m.triton_version.isdigit():
        return [f"{folder / 'manifest.yaml'}: triton.model_version {m.triton_version!r} is not a version number"]
    pinned = int(m.triton_version)
    if pinned not in versions:
        return [f"{folder}: no version folder {pinned}/ for the manifest's triton.model_version (found {versions})"]
    policy = getattr(config, "version_policy", None)
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "specific" and pinned not in list(policy.specific.versions):  # type: ignore[union-attr]
        return [f"{folder / 'config.pbtxt'}: version_policy does not load version {pinned} (the manifest's)"]
    if kind in (None, "latest"):
        n = policy.latest.num_versions if kind == "latest" else 1  # type: ignore[union-attr]
        served = versions[-max(n, 1) :]
        if pinned not in served:
            return [
                f"{folder / 'config.pbtxt'}: Triton serves versions {served} (latest {n}), not the manifest's {pinned}"
            ]
    return []


def _check_onnx(m: ModelManifest, config_dims: dict[str, list[int]]) -> list[str]:
    import onnxruntime as ort

    path = m.onnx_path
    if not path.is_file():
        return [f"{path}: missing; the manifest pins version {m.triton_version}, which needs this file"]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for every kind of bad file
        return [f"{path}: onnxruntime cannot load it ({type(err).__name__}: {str(err)[:300]})"]
    problems = []
    for role, spec, tensors in (
        ("input", m.input, session.get_inputs()),
        ("output", m.output, session.get_outputs()),
    ):
        found = {t.name: t for t in tensors}
        tensor = found.get(spec.name)
        if tensor is None:
            problems.append(f"{path}: no {role} {spec.name!r} (the manifest's triton.{role}); it has {sorted(found)}")
            continue
        expected = KSERVE_TO_ORT.get(spec.datatype)
        if expected is not None and tensor.type != expected:
            problems.append(f"{path}: {role} {spec.name!r} is {tensor.type}, the manifest says {spec.datatype}")
        declared = config_dims.get(spec.name)
        if declared is not None and len(tensor.shape) != len(declared) + 1:
            problems.append(
                f"{path}: {role} {spec.name!r} has rank {len(tensor.shape)} {tensor.shape}; config.pbtxt declares "
                f"dims {declared} plus the batch axis (max_batch_size > 0), rank {len(declared) + 1}"
            )
    if m.input.name in {t.name for t in session.get_inputs()} and len(session.get_inputs()) > 1:
        problems.append(f"{path}: has {len(session.get_inputs())} inputs; the worker feeds exactly one")
    return problems
