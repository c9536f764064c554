"""Decoding a series' instances into a ``VolumeBuilder``, as they arrive.

Native (uncompressed) pixel data is converted straight from the instance's bytes into the volume's slot. Frames in
a compressed transfer syntax (JPEG 2000, JPEG-LS, JPEG lossless, RLE...) are decoded by pydicom's decoders with the
pylibjpeg plugins; those hold the GIL, so with more than one core they run in a small pool of processes (one per
core, started once and kept), and at most a few frames are in flight: memory stays bounded however long the series.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
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

Instance = bytes | bytearray | memoryview | pydicom.Dataset
_IN_FLIGHT_PER_WORKER = 3


def decode_frame(syntax: str, value: bytes, options: dict[str, Any]) -> np.ndarray:
    """One frame of encapsulated pixel data (its value: offset table and fragments), as stored values."""
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(syntax)
    plugin = "pylibjpeg" if "pylibjpeg" in decoder.available_plugins else ""
    array, _ = decoder.as_array(value, index=0, decoding_plugin=plugin, **options)
    return np.asarray(array)


def _ready() -> bool:
    import pydicom.pixels  # noqa: F401  (import the decoders once, before the first frame)

    return True


class DecodePool:
    """Processes that decode compressed frames; one per core. Shared by every series of this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        # forkserver: a clean process to fork from, never a copy of a parent running gRPC or HTTP threads. (Like
        # every multiprocessing start method but fork, it imports the main module in the children: a script that
        # decodes compressed series needs the usual ``if __name__ == "__main__":`` guard.)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["imaging_cds.imaging.decode"])
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)

    def submit(self, syntax: str, value: bytes, options: dict[str, Any]) -> Future[np.ndarray]:
        return self._executor.submit(decode_frame, syntax, value, options)

    def warm(self) -> None:
        """Start the processes and load the decoders now, not at the first compressed frame."""
        for f in [self._executor.submit(_ready) for _ in range(self.workers)]:
            f.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


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
        value = header.encapsulated_value()
        options = header.decoder_options()
        if header.frames > 1:
            from pydicom.encaps import encapsulate, generate_frames

            values = [encapsulate([f]) for f in generate_frames(value, number_of_frames=header.frames)]
            options["number_of_frames"] = 1
        else:
            values = [value]
        for frame, frame_value in enumerate(values):
            if self._pool is None:
                self._put(header, frame, self._decode_here(header, frame_value, options))
                continue
            slot = self.builder.reserve((header.rows, header.columns))
            future = self._pool.submit(header.transfer_syntax, frame_value, options)
            self._pending.append((slot, future, header, frame))
            limit = _IN_FLIGHT_PER_WORKER * self._pool.workers
            while len(self._pending) > limit:
                self._complete()
            self.poll()

    def _decode_here(self, header: InstanceHeader, value: bytes, options: dict[str, Any]) -> np.ndarray:
        try:
            return decode_frame(header.transfer_syntax, value, options)
        except Exception as err:  # decoders raise many types for corrupt or unsupported data
            raise self._error(header.sop_uid, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err

    def _complete(self) -> None:
        slot, future, header, frame = self._pending.popleft()
        try:
            stored = future.result()
        except Exception as err:  # a decoder error in the worker process arrives here
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
                padded=0,
                clipped_high=0,
                air=0,
                sampled=0,
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
