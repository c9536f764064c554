"""``imaging-cds radiomics IMAGE MASK``: IBSI features of one region from files on disk.

IMAGE is a DICOM series folder or a NIfTI file; MASK a DICOM SEG, an RTSTRUCT (``--roi NAME``) or a NIfTI mask.
The options set the IBSI processing steps; ``--preset`` starts from an IBSI reference configuration (A-E).
Exit codes: 0 done, 2 the region cannot be analysed (reason printed), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging_cds.analysis.radiomics.config import (
    DIMS,
    IBSI_CONFIGURATIONS,
    INTERPOLATION_ORDER,
    ConfigError,
    Discretisation,
    RadiomicsConfig,
)
from imaging_cds.analysis.radiomics.features import FAMILIES, FEATURES

if TYPE_CHECKING:
    from imaging_cds.analysis.radiomics.engine import RadiomicsResult

__all__ = ["add_parser", "run"]

EXIT_OK, EXIT_ERROR, EXIT_NOT_ANALYSABLE = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``radiomics`` on the ``imaging-cds`` sub-command parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "radiomics",
        help="IBSI radiomics features of one region (DICOM or NIfTI image; SEG, RTSTRUCT or NIfTI mask)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="DICOM series folder or NIfTI file")
    p.add_argument("mask", type=Path, help="DICOM SEG, RTSTRUCT (file or folder) or NIfTI mask")
    p.add_argument("--roi", help="RTSTRUCT structure name, SEG segment label/number or NIfTI label value")
    p.add_argument("--json", action="store_true", help="print the result as JSON, keyed by IBSI identifier")
    p.add_argument(
        "--preset",
        choices=sorted(IBSI_CONFIGURATIONS),
        default="C",
        help="IBSI configuration the options below start from (default C: 3D, 2 mm, fixed bin size 25)",
    )
    p.add_argument("--aggregation", nargs="+", choices=DIMS, help="texture aggregation(s): 2D, 2.5D, 3D")
    p.add_argument(
        "--spacing",
        help="resample to this spacing in mm: X,Y,Z (3D), X,Y (in-plane only), one number (isotropic) or none",
    )
    p.add_argument("--interpolation", choices=sorted(INTERPOLATION_ORDER), help="image interpolator")
    p.add_argument("--roi-interpolation", choices=sorted(INTERPOLATION_ORDER), help="mask interpolator")
    p.add_argument("--partial-volume", type=float, help="ROI partial-volume threshold after interpolation (0.5)")
    p.add_argument("--rounding", help="round interpolated intensities to this step (1 for CT), or none")
    p.add_argument(
        "--resegment", help="re-segmentation range LOW,HIGH (either may be empty; write --resegment=-1000,400), or none"
    )
    p.add_argument("--outlier-sigma", help="drop intensities beyond mean +- N standard deviations, or none")
    tex = p.add_mutually_exclusive_group()
    tex.add_argument("--bin-size", type=float, help="texture/histogram: fixed bin size (intensity units)")
    tex.add_argument("--bin-number", type=int, help="texture/histogram: fixed bin number")
    ivh = p.add_mutually_exclusive_group()
    ivh.add_argument("--ivh-bin-size", type=float, help="intensity-volume histogram: fixed bin size")
    ivh.add_argument("--ivh-bin-number", type=int, help="intensity-volume histogram: fixed bin number")
    ivh.add_argument("--ivh-none", action="store_true", help="intensity-volume histogram: no discretisation")
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), help="feature families (default: all)")
    p.add_argument("--intensity-unit", help="UCUM unit of the image intensities (default: [hnsf'U] for CT, else 1)")
    p.set_defaults(func=run)
    return p


def _optional_float(text: str | None) -> float | None:
    if text is None or text.strip().lower() in ("", "none"):
        return None
    return float(text)


def config_from_args(args: argparse.Namespace, default_unit: str) -> RadiomicsConfig:
    cfg = IBSI_CONFIGURATIONS[args.preset]
    changes: dict[str, Any] = {}
    if args.aggregation:
        changes["aggregations"] = tuple(dict.fromkeys(args.aggregation))
    if args.spacing is not None:
        if args.spacing.strip().lower() == "none":
            changes["spacing_mm"] = None
        else:
            parts = [float(v) for v in args.spacing.split(",")]
            if len(parts) == 1:
                changes["spacing_mm"] = (parts[0], parts[0], parts[0])
            elif len(parts) == 2:
                changes["spacing_mm"] = (None, parts[1], parts[0])
            elif len(parts) == 3:
                changes["spacing_mm"] = (parts[2], parts[1], parts[0])
            else:
                raise ConfigError(f"--spacing {args.spacing}: expected X,Y,Z, X,Y, one number or none")
    if args.interpolation:
        changes["interpolation"] = args.interpolation
    if args.roi_interpolation:
        changes["roi_interpolation"] = args.roi_interpolation
    if args.partial_volume is not None:
        changes["roi_partial_volume"] = args.partial_volume
    if args.rounding is not None:
        changes["intensity_rounding"] = _optional_float(args.rounding)
    if args.resegment is not None:
        if args.resegment.strip().lower() == "none":
            changes["resegmentation_range"] = None
        else:
            lo, _, hi = args.resegment.partition(",")
            changes["resegmentation_range"] = (_optional_float(lo), _optional_float(hi))
    if args.outlier_sigma is not None:
        changes["outlier_sigma"] = _optional_float(args.outlier_sigma)
    if args.bin_size is not None:
        changes["texture_discretisation"] = Discretisation("fbs", args.bin_size)
    if args.bin_number is not None:
        changes["texture_discretisation"] = Discretisation("fbn", args.bin_number)
    if args.ivh_bin_size is not None:
        changes["ivh_discretisation"] = Discretisation("fbs", args.ivh_bin_size)
    if args.ivh_bin_number is not None:
        changes["ivh_discretisation"] = Discretisation("fbn", args.ivh_bin_number)
    if args.ivh_none:
        changes["ivh_discretisation"] = Discretisation("none")
    if args.families:
        changes["families"] = tuple(dict.fromkeys(args.families))
    changes["intensity_unit"] = args.intensity_unit or default_unit
    return cfg.with_changes(**changes)


def run(args: argparse.Namespace) -> int:
    # Imported here: the engine brings scipy and scikit-image, which other imaging-cds commands do not need.
    from imaging_cds.analysis.radiomics.engine import extract
    from imaging_cds.analysis.radiomics.io import MaskError, load_image, load_mask
    from imaging_cds.analysis.radiomics.processing import EmptyRoiError

    try:
        image = load_image(args.image)
        mask = load_mask(args.mask, image, args.roi)
        config = config_from_args(args, image.intensity_unit)
        result = extract(image.array, mask, image.spacing_mm, config)
    except (MaskError, EmptyRoiError, ConfigError) as err:
        print(f"not analysable: {err}", file=sys.stderr)
        return EXIT_NOT_ANALYSABLE
    summary = result_json(result)
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        _print_table(summary)
    return EXIT_OK


def result_json(result: RadiomicsResult) -> dict[str, Any]:
    """The machine-readable result: features keyed as in ``FEATURES`` (IBSI identifier[.aggregation|parameter])."""
    features: dict[str, Any] = {}
    for key, value in result.values.items():
        f = FEATURES[key]
        features[key] = {
            "value": value if math.isfinite(value) else None,
            "unit": result.units[key],
            "ibsi_id": f.ibsi_id,
            "name": f.name,
            "family": f.family,
            **({"aggregation": f.aggregation.ibsi_id} if f.aggregation else {}),
        }
    cfg = asdict(result.config)
    return {
        "features": features,
        "configuration": cfg,
        "voxels": result.n_voxels,
        "seconds": round(result.seconds.get("total", 0.0), 4),
    }


def _print_table(summary: dict[str, Any]) -> None:
    family = None
    for key, f in summary["features"].items():
        if f["family"] != family:
            family = f["family"]
            print(FAMILIES[family])
        value = "n/a" if f["value"] is None else f"{f['value']:.6g}"
        unit = "" if f["unit"] == "1" else f["unit"]
        print(f"  {key:<10} {f['name'][:70]:<70} {value:>14} {unit}")
    print(f"{len(summary['features'])} features, {summary['voxels']} voxels, {summary['seconds']:.2f} s")
