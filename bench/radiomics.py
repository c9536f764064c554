#!/usr/bin/env python3
"""Radiomics benchmark: seconds per region and share of IBSI reference values matched, per configuration, beside
the library peers that can run in this process.

    .venv/bin/python bench/radiomics.py [--runs 5] [--peers-venv ~/.cache/imaging-cds/radiomics-peers]

Data: ../shared/ibsi (digital phantom as NIfTI; the CT phantom read from DICOM + RTSTRUCT, as a user gives it).
For each configuration it prints our engine's median time per region over ``--runs`` runs (after one warm-up) and
how many IBSI reference values it matches: shared/ibsi's for the digital phantom, A and C, and for B, D and E those
transcribed from the IBSI manual into tests/data/ibsi/reference_values_B_D_E.csv.

``whole_lung`` times the report's radiomics: the lung-density manifest's ``radiomics`` configuration on the lung
mask of a synthetic chest CT (``--lung-slices`` slices of 512 x 512; 0 skips it), the work the worker adds to each
lung-density report.

Peers are never installed into the project's environment. pyradiomics (pyradiomics-bhklab) and MIRP are looked
for in this interpreter and in ``--peers-venv`` (a separate virtual environment of the same Python version, put on
``sys.path``); each is reported ``unavailable`` with the reason when it cannot be imported. pictologics needs
Python >= 3.12 and so never runs in this process. A peer's share is "matched / compared": reference values of the
features it computes under an IBSI name (its own resampling and binning, its default aggregation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# This file is bench/radiomics.py: keep its folder off the path so that ``import radiomics`` finds pyradiomics.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "services"))

from imaging_cds.analysis.radiomics import IBSI_CONFIGURATIONS, extract  # noqa: E402
from imaging_cds.analysis.radiomics.io import load_image, load_mask  # noqa: E402
from imaging_cds.analysis.radiomics.reference import ReferenceValue, load_reference_values  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "ibsi"
DEFAULT_PEERS = Path.home() / ".cache" / "imaging-cds" / "radiomics-peers"
DATA_OF = {"digital_phantom": "dig. phantom", **{c: f"config. {c}" for c in "ABCDE"}}
BDE = REPO / "tests" / "data" / "ibsi" / "reference_values_B_D_E.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_PEERS)
    parser.add_argument("--lung-slices", type=int, default=220, help="whole-lung timing: phantom slices (0: skip)")
    args = parser.parse_args()
    refs = (
        load_reference_values(args.data / "digital_phantom" / "reference_values.csv")
        + load_reference_values(args.data / "ct_phantom" / "reference_values_A_C.csv")
        + load_reference_values(BDE)
    )
    digital = load_image(args.data / "digital_phantom" / "image.nii.gz")
    digital_mask = load_mask(args.data / "digital_phantom" / "mask.nii.gz", digital)
    ct = load_image(args.data / "ct_phantom" / "dicom" / "image")
    ct_mask = load_mask(args.data / "ct_phantom" / "dicom" / "rtstruct", ct, roi="GTV-1")
    regions = {"digital_phantom": (digital, digital_mask)}
    report: dict[str, Any] = {"machine": _machine(), "runs": args.runs, "configurations": {}}
    for name in ("digital_phantom", "A", "B", "C", "D", "E"):
        image, mask = regions.get(name, (ct, ct_mask))
        config = IBSI_CONFIGURATIONS[name].with_changes(intensity_unit=image.intensity_unit)
        values: dict[str, float] = {}

        def ours(image: Any = image, mask: Any = mask, config: Any = config, values: dict[str, float] = values) -> None:
            values.update(extract(image.array, mask, image.spacing_mm, config).values)

        seconds = _time(ours, args.runs)
        entry: dict[str, Any] = {"imaging_cds": {"seconds_per_region": round(seconds, 4)}}
        if name in DATA_OF:
            data_refs = [r for r in refs if r.data == DATA_OF[name]]
            entry["imaging_cds"].update(_share(values, data_refs))
        report["configurations"][name] = entry
    if args.lung_slices:
        report["whole_lung"] = _whole_lung(args.lung_slices, args.runs)
    peers = _load_peers(args.peers_venv)
    report["peers"] = {k: v for k, v in peers.items() if isinstance(v, str)}
    if "pyradiomics" in peers and not isinstance(peers["pyradiomics"], str):
        for name in ("digital_phantom", "A", "C"):
            image, mask = regions.get(name, (ct, ct_mask))
            data_refs = [r for r in refs if r.data == DATA_OF[name]]
            report["configurations"][name]["pyradiomics"] = _run_pyradiomics(
                peers["pyradiomics"], name, image, mask, data_refs, args.runs
            )
    print(json.dumps(report, indent=2))
    return 0


def _whole_lung(n_slices: int, runs: int) -> dict[str, Any]:
    import yaml

    from imaging_cds.analysis.radiomics import config_from_mapping
    from imaging_cds.sample.synthetic_ct import LUNG_LABELS, make_chest_ct

    manifest = yaml.safe_load((REPO / "triton_repo" / "lung-density" / "manifest.yaml").read_text())
    config = config_from_mapping(manifest["radiomics"])
    hu, labels, spacing = make_chest_ct(seed=0, n_slices=n_slices)
    lung = np.isin(labels, LUNG_LABELS)
    stages: dict[str, float] = {}

    def run() -> None:
        stages.update(extract(hu, lung, spacing, config).seconds)

    return {
        "ct": list(hu.shape),
        "lung_voxels": int(lung.sum()),
        "configuration": config.describe(),
        "seconds_per_region": round(_time(run, runs), 4),
        "last_run_stages": {k: round(v, 4) for k, v in stages.items()},
    }


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {"python": platform.python_version(), "cpus": os.cpu_count()}


def _time(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _share(values: dict[str, float], refs: list[ReferenceValue]) -> dict[str, Any]:
    compared = [r for r in refs if r.key in values]
    matched = [r for r in compared if r.matched_by(values[r.key])]
    return {
        "matched": len(matched),
        "compared": len(compared),
        "reference_values": len(refs),
        "share_matched": round(len(matched) / len(refs), 4) if refs else None,
        "failed": sorted({r.key for r in compared if r not in matched})[:20],
    }


def _load_peers(venv: Path) -> dict[str, Any]:
    site = sorted(venv.glob("lib/python*/site-packages"))
    want = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for s in site:
        if s.parent.name == want and str(s) not in sys.path:
            sys.path.append(str(s))
    out: dict[str, Any] = {}
    try:
        import radiomics  # type: ignore[import-not-found]
        from radiomics import featureextractor  # type: ignore[import-not-found]

        radiomics.setVerbosity(40)
        out["pyradiomics"] = featureextractor
    except Exception as err:  # any import failure means the peer is unavailable
        out["pyradiomics"] = f"unavailable: {type(err).__name__}: {err}"
    try:
        import mirp  # type: ignore[import-not-found]  # noqa: F401

        out["mirp"] = (
            "importable, not run by this bench: its results need a name-to-IBSI mapping like pyradiomics' below, "
            "and its numpy entry assumes 1 mm spacing"
        )
    except Exception as err:
        out["mirp"] = f"unavailable: {type(err).__name__}: {err}"
    out["pictologics"] = f"unavailable: needs Python >= 3.12, this is {sys.version_info.major}.{sys.version_info.minor}"
    return out


# pyradiomics feature name -> IBSI key (its default aggregation: GLCM/GLRLM averaged over directions).
_PYRADIOMICS = {
    "shape_MeshVolume": "RNU0", "shape_VoxelVolume": "YEKZ", "shape_SurfaceArea": "C0JK",
    "shape_SurfaceVolumeRatio": "2PR5", "shape_Sphericity": "QCFX", "shape_Maximum3DDiameter": "L0JK",
    "shape_MajorAxisLength": "TDIC", "shape_MinorAxisLength": "P9VJ", "shape_LeastAxisLength": "7J51",
    "shape_Elongation": "Q3CK", "shape_Flatness": "N17B",
    "firstorder_Mean": "Q4LE", "firstorder_Variance": "ECT3", "firstorder_Skewness": "KE2A",
    "firstorder_Kurtosis": "IPH6", "firstorder_Median": "Y12H", "firstorder_Minimum": "1GSF",
    "firstorder_10Percentile": "QG58", "firstorder_90Percentile": "8DWT", "firstorder_Maximum": "84IY",
    "firstorder_InterquartileRange": "SALO", "firstorder_Range": "2OJQ", "firstorder_MeanAbsoluteDeviation": "4FUA",
    "firstorder_RobustMeanAbsoluteDeviation": "1128", "firstorder_Energy": "N8CA",
    "firstorder_RootMeanSquared": "5ZWQ", "firstorder_Entropy": "TLU2", "firstorder_Uniformity": "BJ5W",
    "glcm_Autocorrelation": "QWB0", "glcm_JointAverage": "60VM", "glcm_ClusterProminence": "AE86",
    "glcm_ClusterShade": "7NFM", "glcm_ClusterTendency": "DG8W", "glcm_Contrast": "ACUI", "glcm_Correlation": "NI2N",
    "glcm_DifferenceAverage": "TF7R", "glcm_DifferenceEntropy": "NTRS", "glcm_DifferenceVariance": "D3YU",
    "glcm_JointEnergy": "8ZQL", "glcm_JointEntropy": "TU9B", "glcm_Imc1": "R8DG", "glcm_Imc2": "JN9H",
    "glcm_Idm": "WF0Z", "glcm_Idmn": "1QCO", "glcm_Id": "IB1Z", "glcm_Idn": "NDRX", "glcm_InverseVariance": "E8JP",
    "glcm_MaximumProbability": "GYBY", "glcm_SumAverage": "ZGXS", "glcm_SumEntropy": "P6QZ",
    "glcm_SumSquares": "UR99",
    "glrlm_ShortRunEmphasis": "22OV", "glrlm_LongRunEmphasis": "W4KF", "glrlm_GrayLevelNonUniformity": "R5YN",
    "glrlm_GrayLevelNonUniformityNormalized": "OVBL", "glrlm_RunLengthNonUniformity": "W92Y",
    "glrlm_RunLengthNonUniformityNormalized": "IC23", "glrlm_RunPercentage": "9ZK5",
    "glrlm_GrayLevelVariance": "8CE5", "glrlm_RunVariance": "SXLW", "glrlm_RunEntropy": "HJ9O",
    "glrlm_LowGrayLevelRunEmphasis": "V3SW", "glrlm_HighGrayLevelRunEmphasis": "G3QZ",
    "glrlm_ShortRunLowGrayLevelEmphasis": "HTZT", "glrlm_ShortRunHighGrayLevelEmphasis": "GD3A",
    "glrlm_LongRunLowGrayLevelEmphasis": "IVPO", "glrlm_LongRunHighGrayLevelEmphasis": "3KUM",
    "glszm_SmallAreaEmphasis": "5QRC", "glszm_LargeAreaEmphasis": "48P8", "glszm_GrayLevelNonUniformity": "JNSA",
    "glszm_GrayLevelNonUniformityNormalized": "Y1RO", "glszm_SizeZoneNonUniformity": "4JP3",
    "glszm_SizeZoneNonUniformityNormalized": "VB3A", "glszm_ZonePercentage": "P30P",
    "glszm_GrayLevelVariance": "BYLV", "glszm_ZoneVariance": "3NSA", "glszm_ZoneEntropy": "GU8N",
    "glszm_LowGrayLevelZoneEmphasis": "XMSY", "glszm_HighGrayLevelZoneEmphasis": "5GN9",
    "glszm_SmallAreaLowGrayLevelEmphasis": "5RAI", "glszm_SmallAreaHighGrayLevelEmphasis": "HW1V",
    "glszm_LargeAreaLowGrayLevelEmphasis": "YH51", "glszm_LargeAreaHighGrayLevelEmphasis": "J17V",
    "ngtdm_Coarseness": "QCDE", "ngtdm_Contrast": "65HE", "ngtdm_Busyness": "NQ30", "ngtdm_Complexity": "HDEZ",
    "ngtdm_Strength": "1X9X",
    "gldm_SmallDependenceEmphasis": "SODN", "gldm_LargeDependenceEmphasis": "IMOQ",
    "gldm_GrayLevelNonUniformity": "FP8K", "gldm_DependenceNonUniformity": "Z87G",
    "gldm_DependenceNonUniformityNormalized": "OKJI", "gldm_GrayLevelVariance": "1PFV",
    "gldm_DependenceVariance": "DNX2", "gldm_DependenceEntropy": "FCBV", "gldm_LowGrayLevelEmphasis": "TL9H",
    "gldm_HighGrayLevelEmphasis": "OAE7", "gldm_SmallDependenceLowGrayLevelEmphasis": "EQ3F",
    "gldm_SmallDependenceHighGrayLevelEmphasis": "JA6D", "gldm_LargeDependenceLowGrayLevelEmphasis": "NBZI",
    "gldm_LargeDependenceHighGrayLevelEmphasis": "9QMG",
}  # fmt: skip
_TEXTURE_AGG = {"glcm": "ITBB", "glrlm": "ITBB", "glszm": "KOBO", "ngtdm": "KOBO", "gldm": "KOBO"}
_TEXTURE_AGG_2D = {"glcm": "BTW3", "glrlm": "BTW3", "glszm": "8QNN", "ngtdm": "8QNN", "gldm": "8QNN"}


def _pyradiomics_settings(name: str) -> dict[str, Any]:
    common: dict[str, Any] = {"label": 1, "correctMask": True, "additionalInfo": False}
    if name == "digital_phantom":
        return {**common, "binWidth": 1}
    if name == "A":
        return {**common, "binWidth": 25, "resegmentRange": [-500, 400], "force2D": True, "force2Ddimension": 0}
    return {
        **common,
        "binWidth": 25,
        "resegmentRange": [-1000, 400],
        "resampledPixelSpacing": [2, 2, 2],
        "interpolator": "sitkLinear",
    }


def _run_pyradiomics(
    featureextractor: Any, name: str, image: Any, mask: Any, refs: list[ReferenceValue], runs: int
) -> dict[str, Any]:
    try:
        import SimpleITK as sitk  # type: ignore[import-not-found]

        img = sitk.GetImageFromArray(image.array.astype(np.float32))
        msk = sitk.GetImageFromArray(mask.astype(np.uint8))
        for it in (img, msk):
            it.SetSpacing(tuple(float(s) for s in reversed(image.spacing_mm)))
        extractor = featureextractor.RadiomicsFeatureExtractor(**_pyradiomics_settings(name))
        extractor.enableAllFeatures()
        extractor.enabledFeatures.pop("shape2D", None)  # 2D shape needs a single-slice mask
        result: dict[str, Any] = {}

        def run() -> None:
            result.clear()
            result.update(extractor.execute(img, msk))

        seconds = _time(run, runs)
        aggs = _TEXTURE_AGG_2D if name == "A" else _TEXTURE_AGG
        values: dict[str, float] = {}
        for raw, value in result.items():
            short = raw.removeprefix("original_")
            key = _PYRADIOMICS.get(short)
            if key is None:
                continue
            family = short.split("_")[0]
            values[f"{key}.{aggs[family]}" if family in aggs else key] = float(value)
        return {"seconds_per_region": round(seconds, 4), **_share(values, refs)}
    except Exception as err:  # a peer failing is a result to report, not a crash of the benchmark
        return {"error": f"{type(err).__name__}: {err}"}


if __name__ == "__main__":
    sys.exit(main())
