"""Generated gRPC stubs for the public API (protos/imaging_cds/v1); regenerate with scripts/gen_protos.py."""
