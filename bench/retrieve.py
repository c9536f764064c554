#!/usr/bin/env python3
"""Retrieval benchmark: a 300-slice 512x512 CT from Orthanc into a volume, ours against a named baseline.

    .venv/bin/python bench/retrieve.py [--slices 300] [--runs 5] [--j2k-runs 3] [--only jpeg2000_lossless]

Starts Orthanc from scripts/sandbox on loopback and stores the same synthetic chest CT twice: uncompressed, and as
lossless JPEG 2000 (new UIDs). For each copy, in the same run, it prints JSON with:

- ``ours_s``: PacsClient.iter_series (stored transfer syntax, streamed) decoded into the preallocated volume by
  SeriesDecoder, then ordered, put in the canonical frame and quality-checked (VolumeBuilder.finish).
- ``baseline_s``: dicomweb-client ``retrieve_series`` asking for the stored transfer syntax, pydicom
  ``pixel_array`` per instance, ``numpy.stack`` sorted by position. Compressed instances are decoded by pydicom's
  "pylibjpeg" plugin (pylibjpeg-openjpeg for JPEG 2000: one thread, the GIL held), named explicitly: it is
  pydicom's default as installed, and stays the baseline the issue measured whatever else is installed
  (``baseline_decoding_plugin``). (``default_request_status``: the same call without a transfer syntax; Orthanc
  cannot transcode JPEG 2000 and answers 500.)
- ``ratio`` = baseline / ours (goal >= 3.0 uncompressed, >= 2.0 JPEG 2000).
- ``limit_s`` / ``limit_fraction``: reading the same WADO-RS response and discarding it, divided by ours: how close
  ours is to what the server delivers (goal >= 0.7 uncompressed).
- ``memory_multiple``: peak resident memory added while retrieving (VmHWM after a reset, in a fresh process), as a
  multiple of the volume's size, for ours and the baseline (goal <= 1.5 for ours). Ours decodes JPEG 2000 with
  imagecodecs (OpenJPEG) in one thread per core, in the same process; codecs that hold the GIL would run in worker
  processes, whose memory is reported apart (``decoder_processes_mb``: a fixed cost, not per volume).
- ``local_s`` / ``local_sitk_s`` / ``local_ratio``: the same files from a local folder, the ``analyze`` path
  (scan_study, then FileStream -> SeriesDecoder -> finish) against SimpleITK's ImageSeriesReader with int16 output
  (GetGDCMSeriesFileNames included, which sorts by position like ours); local_ratio = SimpleITK / ours (goal >= 1).

Times are medians of ``--runs`` rounds (``--j2k-runs`` for JPEG 2000) after a warm-up round; each round runs ours, the
baseline, the limit and both local readers once, so a change in the machine's load falls on all alike, and
``rounds`` gives each round's own figures (the spread). The machine (``cpus``) and its load average at start and end
are printed: other work skews parallel decoding most. Where the kernel shares the CPU between sessions
(``/proc/sys/kernel/sched_autogroup_enabled``), another session's busy process caps this one near one core, and
two decoding threads then gain nothing over the baseline's one: the JPEG 2000 ratio means something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import requests  # noqa: E402

from imaging_cds.dicomweb.client import PacsClient  # noqa: E402
from imaging_cds.imaging.decode import SeriesDecoder, shared_pool  # noqa: E402
from imaging_cds.imaging.files import FileStream  # noqa: E402
from imaging_cds.imaging.quality import QualityLimits  # noqa: E402
from imaging_cds.imaging.volume import VolumeBuilder  # noqa: E402
from tests.services import SandboxError, sandbox  # noqa: E402

BASELINE_PLUGIN = "pylibjpeg"
LIMITS = QualityLimits(min_slices=100, max_slice_spacing_mm=3.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--j2k-runs", type=int, default=3)
    parser.add_argument(
        "--only", choices=("uncompressed", "jpeg2000_lossless"), default=None, help="measure one copy, not both"
    )
    parser.add_argument(
        "--memory-child", nargs=4, metavar=("METHOD", "URL_FILE", "STUDY", "SERIES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(*args.memory_child)
    with tempfile.TemporaryDirectory(prefix="imaging-cds-bench-retrieve-") as tmp:
        try:
            with sandbox(Path(tmp) / "sandbox", "--only", "orthanc") as env:
                return run(env, Path(tmp), args)
        except SandboxError as err:
            print(err, file=sys.stderr)
            return 1


def run(env: dict[str, Any], tmp: Path, args: argparse.Namespace) -> int:
    from imaging_cds.sample.synthetic_ct import write_sample_study
    from tests.services import store_folder

    url, user, password = (
        env["IMAGING_CDS_DICOMWEB_URL"],
        env["IMAGING_CDS_DICOMWEB_USERNAME"],
        env["IMAGING_CDS_DICOMWEB_PASSWORD"],
    )
    credentials = tmp / "pacs.json"
    credentials.write_text(json.dumps({"url": url, "username": user, "password": password}))
    credentials.chmod(0o600)
    plain = write_sample_study(tmp / "plain", seed=11, n_slices=args.slices)
    j2k_dir, j2k_study, j2k_series = _j2k_copy(plain.study_dir, tmp / "j2k")
    copies = {
        "uncompressed": (plain.study_dir, plain.study_instance_uid, plain.series_instance_uid, args.runs),
        "jpeg2000_lossless": (j2k_dir, j2k_study, j2k_series, args.j2k_runs),
    }
    pool = shared_pool()
    if pool is not None:
        pool.warm()
    report: dict[str, Any] = {
        "benchmark": "retrieve",
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "sched_autogroup": _autogroup(),
        "slices": args.slices,
        "volume_mb": round(args.slices * 512 * 512 * 2 / 1e6, 1),
        "baseline": "dicomweb-client retrieve_series (transfer-syntax=*), pydicom pixel_array, numpy.stack by position",
        "baseline_decoding_plugin": BASELINE_PLUGIN,
        "ours_decoding": _our_decoding(),
        "goals": {
            "ratio": ">= 3.0 uncompressed, >= 2.0 JPEG 2000",
            "limit_fraction": ">= 0.7 uncompressed",
            "memory_multiple": "<= 1.5",
            "local_ratio": ">= 1.0 each",
        },
    }
    with PacsClient(url, user, password) as pacs:
        for name, (folder, study, series, runs) in copies.items():
            if args.only not in (None, name):
                continue
            store_folder(pacs, folder)
            pacs.search_series(study)
            report[name] = _measure(pacs, url, user, password, credentials, folder, study, series, runs)
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))
    return 0


def _measure(
    pacs: PacsClient,
    url: str,
    user: str,
    password: str,
    credentials: Path,
    folder: Path,
    study: str,
    series: str,
    runs: int,
) -> dict[str, Any]:
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (user, password)
    baseline_client = DICOMwebClient(url, session=session)
    # Interleaved, one of each per round, so a change in the machine's load (other work on it) falls on all alike.
    timings = _interleaved(
        {
            "ours": lambda: _ours(pacs, study, series),
            "baseline": lambda: _baseline(baseline_client, study, series),
            "limit": lambda: _drain(pacs, study, series),
            "local": lambda: _local(folder),
            "sitk": lambda: _simpleitk(folder),
        },
        runs,
    )
    ours, baseline, limit, local, sitk = (
        statistics.median(timings[k]) for k in ("ours", "baseline", "limit", "local", "sitk")
    )
    try:
        baseline_client.retrieve_series(study, series)
        default_status: Any = 200
    except requests.HTTPError as err:
        default_status = err.response.status_code if err.response is not None else "error"
    volume_bytes = len(list(folder.rglob("*.dcm"))) * 512 * 512 * 2
    memory = {m: _memory(m, credentials, study, series, volume_bytes) for m in ("ours", "baseline")}
    return {
        "ours_s": round(ours, 4),
        "baseline_s": round(baseline, 4),
        "ratio": round(baseline / ours, 2),
        "limit_s": round(limit, 4),
        "limit_fraction": round(limit / ours, 3),
        "default_request_status": default_status,
        "memory_multiple": {m: v["multiple"] for m, v in memory.items()},
        "decoder_processes_mb": memory["ours"].get("decoder_processes_mb", 0),
        "local_s": round(local, 4),
        "local_sitk_s": round(sitk, 4),
        "local_ratio": round(sitk / local, 2),
        # Each round's own figures (ours and the baseline ran back to back): the spread behind the medians.
        "rounds": {
            "ours_s": [round(t, 3) for t in timings["ours"]],
            "baseline_s": [round(t, 3) for t in timings["baseline"]],
            "ratio": [round(b / o, 2) for b, o in zip(timings["baseline"], timings["ours"], strict=True)],
            "limit_fraction": [round(t / o, 3) for t, o in zip(timings["limit"], timings["ours"], strict=True)],
            # CPU seconds / wall seconds of this process: the cores ours really had (2 on an idle 2-core machine
            # when decoding is the work), and the baseline's (at most 1).
            "ours_cores_used": [round(c / t, 2) for c, t in zip(timings["ours_cpu"], timings["ours"], strict=True)],
            "baseline_cores_used": [
                round(c / t, 2) for c, t in zip(timings["baseline_cpu"], timings["baseline"], strict=True)
            ],
        },
    }


def _interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Seconds of each function in each of ``runs`` rounds (each round runs every function once), after a
    warm-up round (connections, page cache, decoder threads); ``NAME_cpu``: this process's CPU seconds in it."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    times.update({f"{name}_cpu": [] for name in fns})
    for _ in range(runs):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            times[f"{name}_cpu"].append(time.process_time() - cpu)
    return times


def _ours(pacs: PacsClient, study: str, series: str) -> np.ndarray:
    stream = pacs.iter_series(study, series)
    builder = VolumeBuilder(study, series, stream.expected_images)
    decoder = SeriesDecoder(builder, shared_pool())
    for part in stream:
        decoder.add(part)
    decoder.close()
    return builder.finish(LIMITS).hu


def _baseline(client: Any, study: str, series: str) -> np.ndarray:
    datasets = client.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
    iop = [float(v) for v in datasets[0].ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    for ds in datasets:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.pixel_array_options(decoding_plugin=BASELINE_PLUGIN)
    return np.stack([ds.pixel_array for ds in datasets])


def _autogroup() -> bool:
    """Whether the kernel shares the CPU between sessions (then another session's work caps this one's share)."""
    flag = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return flag.exists() and flag.read_text().strip() == "1"


def _our_decoding() -> str:
    from pydicom.uid import JPEG2000Lossless

    from imaging_cds.imaging.decode import fast_codec

    options = {"samples_per_pixel": 1, "photometric_interpretation": "MONOCHROME2", "bits_allocated": 16}
    codec = fast_codec(JPEG2000Lossless, options)
    pool = shared_pool()
    where = f"{pool.workers} threads" if pool is not None else "this thread"
    if codec is None:
        return f"JPEG 2000: pydicom pylibjpeg plugin, {pool.workers if pool else 1} processes"
    import imagecodecs

    return f"JPEG 2000: imagecodecs {imagecodecs.__version__} ({imagecodecs.jpeg2k_version()}), {where}"


def _drain(pacs: PacsClient, study: str, series: str) -> int:
    return sum(len(chunk) for chunk in pacs.retrieve_bytes(study, series))


def _local(folder: Path) -> np.ndarray:
    from imaging_cds.worker.embedded import scan_study

    local = scan_study(folder)
    ((series_uid, paths),) = local.series.items()
    builder = VolumeBuilder(local.study_uid, series_uid, len(paths))
    decoder = SeriesDecoder(builder, shared_pool())
    for part in FileStream(local.study_uid, paths):
        decoder.add(part)
    decoder.close()
    return builder.finish(LIMITS).hu


def _simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    dicom_dir = str(next(folder.rglob("*.dcm")).parent)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dicom_dir))
    reader.SetOutputPixelType(sitk.sitkInt16)
    return sitk.GetArrayViewFromImage(reader.Execute())


def _j2k_copy(source: Path, target: Path) -> tuple[Path, str, str]:
    """The same images as lossless JPEG 2000, under new study, series and instance UIDs."""
    from pydicom.uid import JPEG2000Lossless, generate_uid

    study, series = generate_uid(), generate_uid()
    target.mkdir(parents=True)
    for i, path in enumerate(sorted(source.rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(target / f"{i:04d}.dcm", enforce_file_format=True)
    return target, study, series


# -- peak memory, in a fresh process per measurement ----------------------------------------------------------


def _memory(method: str, credentials: Path, study: str, series: str, volume_bytes: int) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", method, str(credentials), study, series],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["multiple"] = round(result["peak_added_bytes"] / volume_bytes, 2)
    return result


def _memory_child(method: str, credentials_file: str, study: str, series: str) -> int:
    credentials = json.loads(Path(credentials_file).read_text())
    pacs = PacsClient(credentials["url"], credentials["username"], credentials["password"])
    pacs.search_series(study)
    pool = shared_pool()
    if pool is not None:
        pool.warm()
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (credentials["username"], credentials["password"])
    client = DICOMwebClient(credentials["url"], session=session)
    _drain(pacs, study, series)  # connections up, nothing kept
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    before = _status("VmRSS")
    volume = _ours(pacs, study, series) if method == "ours" else _baseline(client, study, series)
    peak = _status("VmHWM")
    children = 0
    if method == "ours" and pool is not None:
        for pid in _child_pids():
            children += _status("VmHWM", pid)
    print(
        json.dumps(
            {
                "peak_added_bytes": peak - before,
                "volume_bytes": volume.nbytes,
                "decoder_processes_mb": round(children / 1e6),
            }
        )
    )
    return 0


def _status(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _child_pids() -> list[int]:
    """Every descendant of this process (the decoders are children of the forkserver, itself our child)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


if __name__ == "__main__":
    sys.exit(main())
