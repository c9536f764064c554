#!/usr/bin/env python3
"""Measure lung-nodule-cad on held-out synthetic chest CTs with known nodules; prints one JSON object.

    python scripts/evaluate_nodule_cad.py                         # seeds 200-219, 220 slices, 1-3 nodules each
    python scripts/evaluate_nodule_cad.py --seeds 200-204 --nodules 4 --slices 220

Each seed's phantom (``imaging_cds.sample.synthetic_ct.make_chest_phantom``) is assembled into a CtVolume exactly as
its DICOM files would be (the same ImagePositionPatient and PixelSpacing, through ``assemble_volume``), and
``imaging_cds.analysis.nodules.detect_nodules`` runs the model with onnxruntime (``LocalOnnxBackend``, 2 threads).

Matching rule: a finding hits a true nodule when their centres are at most max(diameter / 2, 5 mm) apart (the true
diameter); each true nodule is matched at most once, findings taken most probable first. A finding that hits no
nodule is a false positive. Sensitivity = hit nodules / nodules; false positives per scan = false positives / scans.
Diameter and centre errors are over hits. ``seconds_per_scan`` is ``detect_nodules`` alone (resampling, windows,
inference, post-processing), not the phantom's generation.

The constants of the model were tuned on seeds 100-119 (``--seeds 100-119``); evaluate on seeds that are not those.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "triton_repo" / "lung-nodule-cad"
SIZE_BANDS_MM = ((4.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))
MIN_HIT_RADIUS_MM = 5.0
TRAINING_SEEDS = range(100, 120)


def phantom_volume(seed: int, n_slices: int, nodules: int | None) -> tuple[Any, list[dict[str, Any]]]:
    """The phantom for ``seed`` as a CtVolume (the worker's view of its DICOM series) and its true nodules."""
    from imaging_cds.sample.synthetic_ct import make_chest_phantom
    from imaging_cds.sample.synthetic_ct import phantom_volume as as_volume

    phantom = make_chest_phantom(seed, n_slices, nodules)
    volume = as_volume(phantom, f"synthetic.{seed}", f"synthetic.{seed}.series", sop_prefix=f"seed{seed}.slice")
    return volume, [n.as_json() for n in phantom.nodules]


def match(findings: list[Any], truth: list[dict[str, Any]]) -> tuple[list[tuple[Any, dict[str, Any]]], list[Any]]:
    """(hits as (finding, true nodule), false positives), by the rule in the module docstring."""
    unmatched = list(truth)
    hits: list[tuple[Any, dict[str, Any]]] = []
    false_positives: list[Any] = []
    for finding in sorted(findings, key=lambda f: -f.probability):
        best, best_distance = None, float("inf")
        for nodule in unmatched:
            distance = float(np.linalg.norm(np.subtract(finding.centre_lps_mm, nodule["centre_lps_mm"])))
            if distance <= max(nodule["diameter_mm"] / 2.0, MIN_HIT_RADIUS_MM) and distance < best_distance:
                best, best_distance = nodule, distance
        if best is None:
            false_positives.append(finding)
        else:
            unmatched.remove(best)
            hits.append((finding, best))
    return hits, false_positives


def _band(diameter: float) -> str:
    for low, high in SIZE_BANDS_MM:
        if low <= diameter < high:
            return f"{low:g}-{high:g} mm"
    return f">= {SIZE_BANDS_MM[-1][1]:g} mm" if diameter >= SIZE_BANDS_MM[-1][1] else f"< {SIZE_BANDS_MM[0][0]:g} mm"


def _rate(found: int, total: int) -> dict[str, Any]:
    return {"found": found, "total": total, "sensitivity": round(found / total, 3) if total else None}


def evaluate(seeds: list[int], n_slices: int, nodules: int | None, model_dir: Path) -> dict[str, Any]:
    from imaging_cds.analysis.nodules import detect_nodules
    from imaging_cds.inference.local import LocalOnnxBackend
    from imaging_cds.inference.manifest import load_manifest

    model = load_manifest(model_dir)
    backend = LocalOnnxBackend(threads=2)
    all_truth: list[dict[str, Any]] = []
    hit_ids: set[tuple[int, int]] = set()
    diameter_errors: list[float] = []
    centre_errors: list[float] = []
    false_positives = 0
    seconds: list[float] = []
    per_scan: list[dict[str, Any]] = []
    detect_nodules(*_warm_up(model), backend)  # the first run pays for the session; time the rest fairly
    for seed in seeds:
        volume, truth = phantom_volume(seed, n_slices, nodules)
        started = time.perf_counter()
        findings = detect_nodules(volume, model, backend)
        seconds.append(time.perf_counter() - started)
        hits, fps = match(findings, truth)
        false_positives += len(fps)
        for index, nodule in enumerate(truth):
            nodule["seed"], nodule["index"] = seed, index
        all_truth.extend(truth)
        for finding, nodule in hits:
            hit_ids.add((seed, nodule["index"]))
            diameter_errors.append(finding.diameter_mm - nodule["diameter_mm"])
            centre_errors.append(float(np.linalg.norm(np.subtract(finding.centre_lps_mm, nodule["centre_lps_mm"]))))
        per_scan.append(
            {
                "seed": seed,
                "nodules": len(truth),
                "hits": len(hits),
                "hit_diameters_mm": [[round(n["diameter_mm"], 1), round(f.diameter_mm, 1)] for f, n in hits],
                "false_positives": len(fps),
                "false_positive_probabilities": [round(f.probability, 3) for f in fps],
                "missed_diameters_mm": [round(n["diameter_mm"], 1) for n in truth if (seed, n["index"]) not in hit_ids],
            }
        )
    by_size: dict[str, dict[str, Any]] = {}
    by_type: dict[str, dict[str, Any]] = {}
    for groups, key in ((by_size, lambda n: _band(n["diameter_mm"])), (by_type, lambda n: n["type"])):
        names = sorted({key(n) for n in all_truth})
        for name in names:
            members = [n for n in all_truth if key(n) == name]
            groups[name] = _rate(sum((n["seed"], n["index"]) in hit_ids for n in members), len(members))
    return {
        "model": f"{model.name} {model.version}",
        "seeds": seeds,
        "slices": n_slices,
        "nodules_per_scan": "1-3 drawn per seed" if nodules is None else nodules,
        "match_rule": f"centre distance <= max(true diameter / 2, {MIN_HIT_RADIUS_MM:g} mm), one finding per nodule",
        "report_threshold": model.detection.report_threshold if model.detection else None,
        "scans": len(seeds),
        **_rate(len(hit_ids), len(all_truth)),
        "false_positives_per_scan": round(false_positives / len(seeds), 3),
        "by_size": by_size,
        "by_type": by_type,
        "mean_diameter_error_mm": round(float(np.mean(diameter_errors)), 2) if diameter_errors else None,
        "mean_abs_diameter_error_mm": round(float(np.mean(np.abs(diameter_errors))), 2) if diameter_errors else None,
        "mean_centre_error_mm": round(float(np.mean(centre_errors)), 2) if centre_errors else None,
        "seconds_per_scan": round(float(np.mean(seconds)), 2),
        "max_seconds_per_scan": round(float(np.max(seconds)), 2),
        "per_scan": per_scan,  # hit_diameters_mm: [true, found]
    }


def _warm_up(model: Any) -> tuple[Any, Any]:
    """A small volume (64 slices of air with a soft-tissue block) to start the onnxruntime session."""
    from imaging_cds.imaging.volume import CtVolume

    hu = np.full((64, 96, 96), -1000, dtype=np.int16)
    hu[:, 20:76, 20:76] = 40
    volume = CtVolume("warm-up", "warm-up", hu, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(str(k) for k in range(64)))
    return volume, model


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            seeds.extend(range(int(low), int(high) + 1))
        else:
            seeds.append(int(part))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_seeds, default=_seeds("200-219"), help="e.g. 200-219 or 200,205 (held out)")
    parser.add_argument("--slices", type=int, default=220, help="slices per phantom (default 220, 1.25 mm)")
    parser.add_argument("--nodules", type=int, default=None, help="nodules per phantom (default: 1-3 per seed)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: lung-nodule-cad)")
    parser.add_argument("--allow-training-seeds", action="store_true", help="allow seeds 100-119 (for tuning)")
    args = parser.parse_args(argv)
    tuned_on = sorted(set(args.seeds) & set(TRAINING_SEEDS))
    if tuned_on and not args.allow_training_seeds:
        parser.error(f"seeds {tuned_on} were used to tune the model; held-out figures need other seeds")
    print(json.dumps(evaluate(args.seeds, args.slices, args.nodules, args.model), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
