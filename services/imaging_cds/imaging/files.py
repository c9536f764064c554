"""Reading a series from local files (the ``analyze`` path) as the same Part 10 bytes the PACS would send."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from imaging_cds.errors import NotAnalyzableError


class FileStream:
    """The files' bytes, one at a time, in one reused buffer (each item valid until the next is taken).

    ``expected_images``: how many images the files hold (their count, times frames per file when known), so the
    volume is allocated once.
    """

    def __init__(self, study_uid: str, paths: list[Path], frames_per_file: int = 1) -> None:
        self.study_uid = study_uid
        self.paths = paths
        self.expected_images = len(paths) * max(1, frames_per_file)

    def __iter__(self) -> Iterator[memoryview]:
        buf = bytearray(0)
        for path in self.paths:
            try:
                with open(path, "rb", buffering=0) as f:
                    size = os.fstat(f.fileno()).st_size
                    if len(buf) < size:
                        buf = bytearray(size)
                    view = memoryview(buf)[:size]
                    got = 0
                    while got < size:
                        n = f.readinto(view[got:])
                        if not n:
                            break
                        got += n
            except OSError as err:
                raise NotAnalyzableError(self.study_uid, f"{path.name}: unreadable ({err.strerror})") from err
            yield view[:got]
