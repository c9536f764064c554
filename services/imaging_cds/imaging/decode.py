"""Decoding a series' instances into a ``VolumeBuilder``, as they arrive.

Native (uncompressed) pixel data is converted straight from the instance's bytes into the volume's slot.

Frames in a compressed transfer syntax are decoded, for single-sample monochrome images (CT), by imagecodecs when it
is installed: OpenJPEG for JPEG 2000, CharLS for JPEG-LS, libjpeg-turbo for JPEG lossless (process 14). These
release the GIL, so with more than one core the frames are decoded by a pool of threads (one per core) and put into
the volume by the caller's thread; nothing is pickled or copied between processes. The stored values are those
pydicom's ``pixel_array`` gives (same dtype, same sign correction of JPEG 2000 and JPEG-LS codestreams; the tests
compare them on pydicom's test files). Everything else (RLE, lossy JPEG, colour images, or any of these when
imagecodecs is missing or rejects a frame) goes through pydicom's decoders with the pylibjpeg plugins, which hold
the GIL: with more than one core those run in a small pool of processes, started at the first such frame and kept.
Either way at most a few frames are in flight, so memory stays bounded however long the series.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import pydicom

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.instance import (
    InstanceError,
    InstanceHeader,
    _header,
    frame_geometries,
    header_values,
    read_instance,
)
from imaging_cds.imaging.quality import SliceFacts
from imaging_cds.imaging.volume import SliceValues, VolumeBuilder

try:
    import imagecodecs
except ImportError:  # pragma: no cover - a dependency; without it pydicom's decoders do all the work
    imagecodecs = None  # type: ignore[assignment]

Instance = bytes | bytearray | memoryview | pydicom.Dataset
FrameCodec = Callable[[bytes], np.ndarray]
_IN_FLIGHT_PER_WORKER = 3

_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})  # JPEG 2000 lossless, lossy
_JLS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})  # JPEG-LS lossless, near-lossless
_JPEG_LOSSLESS = frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})  # process 14, and its SV1
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# JPEG start-of-frame markers (their segment's first byte is the sample precision): SOF0-SOF15 less DHT, JPG and
# DAC, and JPEG-LS's SOF55.
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


# -- one frame ----------------------------------------------------------------------------------------------------


def fast_codec(syntax: str, options: dict[str, Any]) -> FrameCodec | None:
    """The imagecodecs decoder for one frame's codestream in ``syntax``, or None where pydicom decodes it.

    Only single-sample monochrome images of 8 or 16 bits allocated: the layouts whose stored values are checked to
    match pydicom's."""
    if imagecodecs is None:
        return None
    if options["samples_per_pixel"] != 1 or options["photometric_interpretation"] not in _MONOCHROME:
        return None
    if options["bits_allocated"] not in (8, 16):
        return None
    if syntax in _J2K and imagecodecs.JPEG2K.available:
        return _jpeg2k
    if syntax in _JLS and imagecodecs.JPEGLS.available:
        return imagecodecs.jpegls_decode
    if syntax in _JPEG_LOSSLESS and imagecodecs.JPEG8.available:
        return imagecodecs.jpeg8_decode
    return None


def _jpeg2k(codestream: bytes) -> np.ndarray:
    # One OpenJPEG thread per frame: the pool already decodes one frame per core, more threads would only
    # oversubscribe them.
    return imagecodecs.jpeg2k_decode(codestream, numthreads=1)


def decode_codestream(syntax: str, codestream: bytes, options: dict[str, Any]) -> np.ndarray:
    """One frame's codestream (its fragments joined) as stored values, (rows, columns), exactly as pydicom's
    ``pixel_array`` gives them. ``options``: ``InstanceHeader.decoder_options()``."""
    codec = fast_codec(syntax, options)
    if codec is not None:
        try:
            return _conform(syntax, codestream, codec(codestream), options)
        except (ValueError, RuntimeError):  # imagecodecs' errors are RuntimeError subclasses; let pydicom try
            pass
    from pydicom.encaps import encapsulate

    return _decode_with_pydicom(syntax, encapsulate([codestream]), {**options, "number_of_frames": 1})


def decode_frame(syntax: str, value: bytes, options: dict[str, Any]) -> np.ndarray:
    """One frame of encapsulated pixel data (its value: offset table and fragments), as stored values."""
    from pydicom.encaps import generate_frames

    if fast_codec(syntax, options) is None:
        return _decode_with_pydicom(syntax, value, options)
    (codestream,) = generate_frames(value, number_of_frames=1)
    return decode_codestream(syntax, codestream, options)


def _decode_with_pydicom(syntax: str, value: bytes, options: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(syntax)
    plugin = "pylibjpeg" if "pylibjpeg" in decoder.available_plugins else ""
    array, _ = decoder.as_array(value, index=0, decoding_plugin=plugin, **options)
    return np.asarray(array)


def _conform(syntax: str, codestream: bytes, decoded: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """``decoded`` as the stored values pydicom gives: the dtype of Bits Allocated and Pixel Representation (the
    codec's bytes reinterpreted, as pydicom does), and a codestream whose signedness disagrees with Pixel
    Representation sign-corrected as pydicom does (``pydicom.pixels.decoders.base._apply_sign_correction``)."""
    signed = int(options["pixel_representation"])
    dtype = np.dtype(f"{'i' if signed else 'u'}{options['bits_allocated'] // 8}")
    if decoded.shape != (options["rows"], options["columns"]) or decoded.dtype.itemsize != dtype.itemsize:
        raise ValueError(f"decoded {decoded.dtype} {decoded.shape}, expected {dtype} rows x columns")
    array = decoded.view(dtype)
    shift = 0
    if syntax in _J2K:
        from pydicom.pixels.utils import get_j2k_parameters

        params = get_j2k_parameters(codestream)
        precision = int(params.get("precision", options["bits_stored"]))
        if bool(params.get("is_signed", signed)) != bool(signed):
            shift = 8 * dtype.itemsize - precision
    elif syntax in _JLS and signed:
        shift = 8 * dtype.itemsize - (_jpeg_precision(codestream) or int(options["bits_stored"]))
    if shift > 0:
        np.left_shift(array, shift, out=array)
        np.right_shift(array, shift, out=array)
    return array


def _jpeg_precision(codestream: bytes) -> int | None:
    """The sample precision in a JPEG or JPEG-LS codestream's start-of-frame segment; None if there is none."""
    pos = 2  # after SOI
    while pos + 4 < len(codestream) and codestream[pos] == 0xFF:
        marker = codestream[pos + 1]
        if marker in _SOF_MARKERS:
            return codestream[pos + 4]
        pos += 2 + int.from_bytes(codestream[pos + 2 : pos + 4], "big")
    return None


def _ready() -> bool:
    import pydicom.pixels  # noqa: F401  (import the decoders once, before the first frame)

    return True


# -- the pool -----------------------------------------------------------------------------------------------------


class DecodePool:
    """Decodes compressed frames beside the caller, one worker per core; shared by every series of this process.

    Frames that imagecodecs decodes go to threads (it releases the GIL); the rest go to processes (pydicom's
    pylibjpeg plugins hold it), started at the first such frame."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self._processes: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, syntax: str, codestream: bytes, options: dict[str, Any]) -> Future[np.ndarray]:
        """Decode one frame's codestream (``decode_codestream``)."""
        executor: Executor = self._threads if fast_codec(syntax, options) is not None else self._process_pool()
        return executor.submit(decode_codestream, syntax, codestream, options)

    def warm(self, processes: bool = False) -> None:
        """Start the threads (and with ``processes`` the processes) and load the decoders now, not at the first
        compressed frame."""
        executors: list[Executor] = [self._threads, *([self._process_pool()] if processes else [])]
        for f in [e.submit(_ready) for e in executors for _ in range(self.workers)]:
            f.result()

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._processes is None:
                # forkserver: a clean process to fork from, never a copy of a parent running gRPC or HTTP threads.
                # (Like every multiprocessing start method but fork, it imports the main module in the children:
                # a script that decodes such series needs the usual ``if __name__ == "__main__":`` guard.)
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["imaging_cds.imaging.decode"])
                self._processes = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            return self._processes


_pool: DecodePool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> DecodePool | None:
    """The process's decode pool (None on a single core: frames are decoded in this process)."""
    global _pool
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 2:
        return None
    with _pool_lock:
        if _pool is None:
            _pool = DecodePool(workers)
            atexit.register(_pool.close)
        return _pool


class SeriesDecoder:
    """Feeds one series' instances into ``builder``: ``add`` each instance, then ``close``.

    Raises NotAnalyzableError naming the instance (its SOP Instance UID) when one is not a usable CT image.
    """

    def __init__(self, builder: VolumeBuilder, pool: DecodePool | None = None) -> None:
        self.builder = builder
        self._pool = pool
        self._pending: deque[tuple[int, Future[np.ndarray], InstanceHeader, int]] = deque()

    def add(self, instance: Instance) -> None:
        if isinstance(instance, pydicom.Dataset):
            self._add_dataset(instance)
            return
        try:
            header = read_instance(instance)
        except InstanceError as err:
            raise self._error("(unreadable)", str(err)) from err
        self._check(header)
        if header.encapsulated:
            self._add_encapsulated(header)
            return
        for frame in range(header.frames):
            try:
                stored = header.native_frame(frame)
            except InstanceError as err:
                raise self._error(header.sop_uid, f"pixel data cannot be decoded ({err})") from err
            self._put(header, frame, stored)

    def poll(self) -> None:
        """Take in the frames the pool has finished, in order, without waiting."""
        while self._pending and self._pending[0][1].done():
            self._complete()

    def close(self) -> None:
        """Wait for every frame still being decoded."""
        while self._pending:
            self._complete()

    def abandon(self) -> None:
        for _, future, _, _ in self._pending:
            future.cancel()
        self._pending.clear()

    # -- internals ----------------------------------------------------------------------------------------------

    def _add_encapsulated(self, header: InstanceHeader) -> None:
        from pydicom.encaps import generate_frames

        options = header.decoder_options()
        options["number_of_frames"] = 1  # each codestream is one frame
        codestreams = generate_frames(header.encapsulated_value(), number_of_frames=header.frames)
        for frame, codestream in enumerate(codestreams):
            if self._pool is None:
                self._put(header, frame, self._decode_here(header, codestream, options))
                continue
            slot = self.builder.reserve((header.rows, header.columns))
            future = self._pool.submit(header.transfer_syntax, codestream, options)
            self._pending.append((slot, future, header, frame))
            limit = _IN_FLIGHT_PER_WORKER * self._pool.workers
            while len(self._pending) > limit:
                self._complete()
            self.poll()

    def _decode_here(self, header: InstanceHeader, codestream: bytes, options: dict[str, Any]) -> np.ndarray:
        try:
            return decode_codestream(header.transfer_syntax, codestream, options)
        except Exception as err:  # decoders raise many types for corrupt or unsupported data
            raise self._error(header.sop_uid, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err

    def _complete(self) -> None:
        slot, future, header, frame = self._pending.popleft()
        try:
            stored = future.result()
        except Exception as err:  # a decoder error in a worker arrives here
            self.abandon()
            raise self._error(header.sop_uid, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err
        self._put(header, frame, stored, slot)

    def _put(self, header: InstanceHeader, frame: int, stored: np.ndarray, slot: int | None = None) -> None:
        if stored.ndim != 2:
            raise self._error(header.sop_uid, f"expected one 2-D frame, found shape {stored.shape}")
        geometry = header.geometry[frame]
        assert geometry.position_lps_mm and geometry.orientation and geometry.pixel_spacing_mm  # by _check
        if slot is None:
            slot = self.builder.reserve((header.rows, header.columns))
        padding = None
        if header.padding_value is not None:
            limit = header.padding_value if header.padding_limit is None else header.padding_limit
            padding = (min(header.padding_value, limit), max(header.padding_value, limit))
        self.builder.put(
            slot,
            SliceValues(stored, geometry.rescale_slope, geometry.rescale_intercept, padding),
            SliceFacts(
                key=header.sop_uid if header.frames == 1 else f"{header.sop_uid}#{frame + 1}",
                shape=(header.rows, header.columns),
                position_lps_mm=geometry.position_lps_mm,
                orientation=geometry.orientation,
                pixel_spacing_mm=geometry.pixel_spacing_mm,
                gantry_tilt_deg=header.gantry_tilt_deg,
            ),
        )

    def _check(self, header: InstanceHeader) -> None:
        if header.modality != "CT":
            raise self._error(header.sop_uid, f"modality {header.modality or 'missing'}, expected CT")
        missing = []
        first = header.geometry[0] if header.geometry else None
        if first is None or first.position_lps_mm is None:
            missing.append("ImagePositionPatient")
        if first is None or first.orientation is None:
            missing.append("ImageOrientationPatient")
        if first is None or first.pixel_spacing_mm is None:
            missing.append("PixelSpacing")
        if not header.has_pixels:
            missing.append("PixelData")
        if missing:
            raise self._error(header.sop_uid, f"missing {', '.join(missing)}")
        for i, g in enumerate(header.geometry):
            if g.position_lps_mm is None or g.orientation is None or g.pixel_spacing_mm is None:
                raise self._error(header.sop_uid, f"frame {i + 1}: missing plane position, orientation or spacing")
        if header.samples_per_pixel != 1:
            raise self._error(header.sop_uid, f"{header.samples_per_pixel} samples per pixel, expected 1")
        if not header.rows or not header.columns:
            raise self._error(header.sop_uid, "no Rows or Columns")

    def _add_dataset(self, ds: pydicom.Dataset) -> None:
        """A pydicom Dataset (tests, callers that already parsed one): pixels through ``pixel_array``."""
        values = header_values(ds)
        values["pixel_offset"] = 0 if "PixelData" in ds else -1
        syntax = str(values.get("transfer_syntax") or "1.2.840.10008.1.2.1")
        header = _header(values, syntax, b"")
        frames = frame_geometries(ds, header.frames)
        if frames is not None:
            from dataclasses import replace

            header = replace(header, geometry=frames)
        self._check(header)
        try:
            pixels = ds.pixel_array
        except Exception as err:  # pydicom raises many types for broken or undecodable pixel data
            raise self._error(header.sop_uid, f"pixel data cannot be decoded ({err})") from err
        if header.frames == 1:
            self._put(header, 0, pixels)
            return
        if pixels.ndim != 3 or pixels.shape[0] != header.frames:
            raise self._error(header.sop_uid, f"expected {header.frames} frames, found shape {pixels.shape}")
        for frame in range(header.frames):
            self._put(header, frame, pixels[frame])

    def _error(self, sop_uid: str, what: str) -> NotAnalyzableError:
        return NotAnalyzableError(self.builder.study_uid, f"instance {sop_uid or '(no SOP Instance UID)'}: {what}")
