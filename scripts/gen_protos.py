#!/usr/bin/env python3
"""Generate the Python gRPC stubs for protos/ into services/ (protos/imaging_cds/v1 -> imaging_cds.v1).

    python scripts/gen_protos.py            # write the stubs
    python scripts/gen_protos.py --check    # exit 1 when the committed stubs differ from freshly generated ones

The stubs are committed so the package installs without grpcio-tools; tests/unit/test_protos.py runs --check.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
OUT_ROOT = REPO / "services"


def generate(out_root: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # imported here: only this script needs grpcio-tools

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in out_root.rglob("*_pb2*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = OUT_ROOT / path.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(committed.relative_to(REPO)))
        if stale:
            print("stale generated stubs (run python scripts/gen_protos.py):", *stale, sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
