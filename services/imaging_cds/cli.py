"""The ``imaging-cds`` command line.

Exit codes: 0 done, 2 input not analysable (the reason is printed), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from imaging_cds import __version__
from imaging_cds.analysis.radiomics import cli as radiomics_cli
from imaging_cds.config import Settings
from imaging_cds.deid import cli as deid_cli
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import ManifestError, ModelManifest, load_manifests
from imaging_cds.jobs.model import Job, JobState

EXIT_OK, EXIT_ERROR, EXIT_NOT_ANALYSABLE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    service = args.command in ("gateway", "worker")
    logging.basicConfig(
        level=(os.environ.get("IMAGING_CDS_LOG_LEVEL", "INFO").upper() if service else logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Client libraries log every request URL at INFO; ours say what matters, without query strings.
    for noisy in ("httpx", "urllib3", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except NotAnalyzableError as err:
        print(f"not analysable: {err}", file=sys.stderr)
        return EXIT_NOT_ANALYSABLE
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imaging-cds", description="Imaging AI results into the EHR as FHIR.")
    parser.add_argument("--version", action="version", version=f"imaging-cds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="analyse one study folder locally (onnxruntime, no servers)")
    p.add_argument("study_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for bundle.json and key_image.png")
    p.add_argument(
        "--model", action="append", default=None, help="a model to run (repeatable); default: every model there is"
    )
    p.add_argument("--model-repository", type=Path, default=None, help="default: IMAGING_CDS_MODEL_REPOSITORY")
    p.add_argument("--subject", default="Patient/unknown", help="FHIR reference of the patient, e.g. Patient/123")
    p.add_argument("--imaging-study-id", default=None, help="FHIR ImagingStudy id the report should reference")
    p.add_argument("--status", choices=("preliminary", "final"), default="preliminary")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("sample-study", help="write a synthetic chest CT with ground_truth.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=220)
    p.add_argument(
        "--nodules", type=int, default=None, help="pulmonary nodules to place (default: 1 to 3, drawn from the seed)"
    )
    p.set_defaults(func=_sample_study)

    p = sub.add_parser("gateway", help="run the gateway (gRPC API + FHIR webhook), configured by IMAGING_CDS_*")
    p.set_defaults(func=_gateway)

    p = sub.add_parser("worker", help="run a worker, configured by IMAGING_CDS_*")
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="a model to run (repeatable); default: IMAGING_CDS_MODELS, or every model in the repository",
    )
    p.set_defaults(func=_worker)

    p = sub.add_parser("jobs", help="operate the job queue: list, show, replay, cancel (IMAGING_CDS_REDIS_URL)")
    p.add_argument("action", choices=("list", "show", "replay", "cancel"))
    p.add_argument("job_id", nargs="?", help="for show, replay and cancel")
    p.add_argument("--state", choices=[s.value for s in JobState], help="list: only jobs in this state")
    p.add_argument("--dead", action="store_true", help="list: the dead-letter stream")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("models", help="the model manifests in the model repository")
    p.add_argument("action", choices=("list", "check"), help="list: the models; check: validate every model folder")
    p.add_argument("--model-repository", type=Path, default=None, help="default: IMAGING_CDS_MODEL_REPOSITORY")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)
    radiomics_cli.add_parser(sub)
    deid_cli.add_parser(sub)
    return parser


def _analyze(args: argparse.Namespace) -> int:
    from imaging_cds.inference.local import LocalOnnxBackend
    from imaging_cds.worker.embedded import analyze_folder, result_summary

    if not args.study_dir.is_dir():
        print(f"error: {args.study_dir} is not a folder", file=sys.stderr)
        return EXIT_ERROR
    from imaging_cds.models import runnable_models

    models = runnable_models(_model_repository(args), args.model or [])
    result = analyze_folder(
        args.study_dir,
        args.out,
        models,
        LocalOnnxBackend(),
        subject=args.subject,
        imaging_study_id=args.imaging_study_id,
        status=args.status,
    )
    summary = result_summary(result)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return EXIT_OK


def _model_repository(args: argparse.Namespace) -> Path:
    return Path(args.model_repository) if args.model_repository else Settings.from_env().model_repository


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"study {summary['study_uid']}")
    for model in summary["models"]:
        print(f"model {model['model']}, series {model['series_uid']}")
        for key, m in model["measurements"].items():
            print(f"  {key:<20} {m['value']:>10g} {m['display_unit']}")
        print(f"  {model['conclusion']}")
        print(f"  key image: {model['key_image']}")
    for refused in summary["not_analysable"]:
        print(f"model {refused['model']}: not analysable: {refused['reason']}")
    print(f"FHIR transaction Bundle: {summary['bundle']}")
    print(f"done in {summary['stage_seconds']['total']:.1f} s")


def _sample_study(args: argparse.Namespace) -> int:
    from imaging_cds.sample.synthetic_ct import write_sample_study

    study = write_sample_study(args.out, seed=args.seed, n_slices=args.slices, nodules=args.nodules)
    print(f"wrote {study.n_instances} CT images to {study.study_dir}")
    for nodule in study.ground_truth["nodules"]:
        x, y, z = nodule["centre_lps_mm"]
        print(
            f"  {nodule['type']} nodule, {nodule['diameter_mm']:.1f} mm, {nodule['side']} lung, "
            f"LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm, image {nodule['slice_index'] + 1}"
        )
    print(f"ground truth: {args.out / 'ground_truth.json'}")
    return EXIT_OK


def _gateway(args: argparse.Namespace) -> int:
    from imaging_cds.gateway.server import run_gateway

    run_gateway(Settings.from_env())
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    from imaging_cds.dicomweb.client import PacsClient
    from imaging_cds.fhir.client import FhirClient
    from imaging_cds.inference.triton import TritonBackend
    from imaging_cds.jobs.queue import queue_from_settings
    from imaging_cds.metrics import serve_worker_metrics
    from imaging_cds.models import configured_models
    from imaging_cds.worker.service import Worker

    settings = Settings.from_env()
    models = configured_models(settings, args.model)
    logging.getLogger("imaging_cds.worker").info("models: %s", ", ".join(f"{m.name} {m.version}" for m in models))
    serve_worker_metrics(settings.metrics_host, settings.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    queue = queue_from_settings(settings)
    with (
        FhirClient.from_settings(settings) as fhir,
        PacsClient.from_settings(settings) as pacs,
    ):
        backend = TritonBackend.from_settings(settings)
        try:
            Worker(settings, queue, fhir, pacs, backend, models).run(stop)
        finally:
            backend.close()
    return EXIT_OK


def _jobs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imaging_cds.jobs.queue import queue_from_settings

    queue = queue_from_settings(Settings.from_env())
    if args.action == "list":
        if args.dead:
            rows: list[dict[str, Any]] = [asdict(d) for d in queue.dead_letters(args.limit)]
        else:
            state = JobState(args.state) if args.state else None
            rows = [_job_row(j) for j in queue.list_jobs(state, limit=args.limit)]
        columns = ("job_id", "attempts", "reason") if args.dead else ("job_id", "state", "imaging_study", "outcome")
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print("  ".join(str(row[c]) for c in columns))
        return EXIT_OK
    if not args.job_id:
        print(f"error: jobs {args.action} needs a job id", file=sys.stderr)
        return EXIT_ERROR
    job = queue.get(args.job_id)
    if job is None:
        print(f"error: no job {args.job_id}", file=sys.stderr)
        return EXIT_ERROR
    if args.action != "show" and job.state.terminal != (args.action == "replay"):
        what = "has not ended" if args.action == "replay" else "already ended"
        print(f"error: job {job.job_id} is {job.state.value}: it {what}; nothing to {args.action}", file=sys.stderr)
        return EXIT_ERROR
    if args.action == "replay":
        job = queue.replay(job.job_id) or job
    elif args.action == "cancel":
        job = queue.cancel(job.job_id) or job
    print(json.dumps(_job_row(job), indent=2))
    return EXIT_OK


def _job_row(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": job.state.value,
        "imaging_study": f"ImagingStudy/{job.study.imaging_study_id}",
        "study_uid": job.study.study_uid,
        "priority": job.priority.value,
        "attempts": job.attempts,
        "deliveries": job.deliveries,
        "outcome": job.outcome,
        "report": job.report_reference,
        "reports": list(job.report_references),
        "updated": job.updated,
        "stage_seconds": job.stage_seconds,
    }


def _models(args: argparse.Namespace) -> int:
    from imaging_cds.inference.check import check_repository

    repository = _model_repository(args)
    if args.action == "check":
        checks = check_repository(repository)
        if args.json:
            print(json.dumps([{"folder": str(c.folder), "ok": c.ok, "problems": list(c.problems)} for c in checks]))
        else:
            for c in checks:
                print(f"{c.folder.name}: {'ok' if c.ok else 'PROBLEMS'}")
                for problem in c.problems:
                    print(f"  - {problem}")
        if not checks:
            print(f"error: no model folders in {repository}", file=sys.stderr)
            return EXIT_ERROR
        return EXIT_OK if all(c.ok for c in checks) else EXIT_ERROR
    manifests: list[ModelManifest] = load_manifests(repository)
    rows = [
        {
            "name": m.name,
            "version": m.version,
            "title": m.title,
            "task": m.task,
            "triton_model": m.triton_model,
            "triton_version": m.triton_version,
            "max_batch_size": m.max_batch,
            "onnx": str(m.onnx_path),
        }
        for m in manifests
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['version']:<8} {r['task']:<14} {r['title']}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
