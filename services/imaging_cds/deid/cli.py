"""``imaging-cds deidentify IN OUT``: de-identified copies of a file or a folder of DICOM files.

Copies are written as ``OUT/<study>/<series>/<instance>.dcm`` under the new UIDs (input file and folder names may
themselves carry names or IDs, so none is reused), with ``OUT/deidentify.json`` listing what was written and which
images may carry burned-in text. The report names only new UIDs and output paths, never input names.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging_cds.deid.deidentify import Deidentifier, DeidOptions

EXIT_OK, EXIT_ERROR = 0, 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "deidentify",
        help="de-identified copies for research (DICOM PS3.15 Basic Application Level Confidentiality Profile)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help="a DICOM file or a folder (searched recursively)")
    p.add_argument("output", type=Path, help="folder for the copies and deidentify.json")
    p.add_argument(
        "--dates",
        choices=("shift", "remove"),
        default="shift",
        help="shift dates back per patient, keeping intervals (default), or remove them",
    )
    p.add_argument("--date-shift-days", type=int, default=None, help="shift every date back by this many days")
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="secret key for UID remapping, pseudonyms and date shifts; created if missing. Keep it (and keep it "
        "secret) to de-identify more images of the same patients consistently. Default: a new key for this run",
    )
    p.add_argument(
        "--exclude-burned-in",
        action="store_true",
        help="do not write images that may carry burned-in text (they are listed in the report either way)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.input.exists():
        print(f"error: {args.input} does not exist", file=sys.stderr)
        return EXIT_ERROR
    if args.output.resolve() == args.input.resolve() or args.input.resolve() in args.output.resolve().parents:
        print("error: write the copies outside the input folder", file=sys.stderr)
        return EXIT_ERROR
    key = _key(args.key_file)
    deid = Deidentifier(DeidOptions(key=key, dates=args.dates, date_shift_days=args.date_shift_days))
    files = [args.input] if args.input.is_file() else sorted(p for p in args.input.rglob("*") if p.is_file())
    written, flagged, excluded, skipped = [], [], [], 0
    for path in files:
        try:
            original = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            skipped += 1
            continue
        result = deid.deidentify(original)
        ds = result.dataset
        relative = Path(
            str(ds.get("StudyInstanceUID", "no-study")),
            str(ds.get("SeriesInstanceUID", "no-series")),
            f"{ds.get('SOPInstanceUID', 'no-instance')}.dcm",
        )
        if result.burned_in_text_risk:
            flagged.append({"file": str(relative), "why": result.burned_in_text_risk})
            if args.exclude_burned_in:
                excluded.append(str(relative))
                continue
        target = args.output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # a bare dataset: written as it was read
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if getattr(original, "is_implicit_VR", True) else ExplicitVRLittleEndian
            )
        ds.save_as(target, enforce_file_format=True)
        written.append(str(relative))
    report = {
        "profile": "DICOM PS3.15 Basic Application Level Confidentiality Profile",
        "dates": args.dates if args.date_shift_days is None else f"shifted back {args.date_shift_days} days",
        "written": len(written),
        "not_dicom_skipped": skipped,
        "may_carry_burned_in_text": flagged,
        "excluded": excluded,
        "files": written,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "deidentify.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {len(written)} de-identified copies to {args.output} ({skipped} non-DICOM files skipped)")
        for item in flagged:
            print(f"  may carry burned-in text: {item['file']} ({item['why']})")
        print(f"report: {args.output / 'deidentify.json'}")
        if args.key_file is None:
            print("note: a new key was used; UIDs and dates of a later run will differ (use --key-file)")
    return EXIT_OK


def _key(path: Path | None) -> bytes:
    if path is None:
        return secrets.token_bytes(32)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return key
