"""The PACS, over DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store).

One ``PacsClient`` per PACS: configured once (base URL, credentials, timeouts), its HTTP session reused across
studies, closed by ``close()``. Instances are asked for in their stored transfer syntax (``*``) and decoded here
(pylibjpeg for JPEG 2000 / JPEG-LS): server-side transcoding is slower on Orthanc.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from imaging_cds.errors import TransientError

_ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
_SERIES_FIELDS = ("Modality", "BodyPartExamined", "SeriesDescription", "NumberOfSeriesRelatedInstances")


@dataclass(frozen=True)
class SeriesSummary:
    """What QIDO-RS says of one series: enough to choose one without downloading it."""

    series_uid: str
    modality: str
    body_part: str
    description: str
    n_instances: int


class PacsClient:
    def __init__(self, url: str, username: str = "", password: str = "", timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        if username:
            self._session.auth = (username, password)
        self._dicomweb = DICOMwebClient(self.url, session=self._session, timeout=timeout_s)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search_series(self, study_uid: str) -> list[SeriesSummary]:
        """The study's series; empty when the PACS does not know the study."""
        try:
            found = self._dicomweb.search_for_series(study_instance_uid=study_uid, fields=_SERIES_FIELDS)
        except requests.HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return []
            raise _transient(study_uid, "search", err) from err
        except requests.RequestException as err:
            raise _transient(study_uid, "search", err) from err
        return [_summary(pydicom.Dataset.from_json(item)) for item in found]

    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[pydicom.Dataset]:
        """Each instance of the series as it arrives (streamed, stored transfer syntax), in the PACS's order."""
        try:
            yield from self._dicomweb.iter_series(study_uid, series_uid, media_types=_ANY_TRANSFER_SYNTAX)
        except requests.RequestException as err:
            raise _transient(study_uid, "retrieve", err) from err

    def store(self, datasets: Iterable[pydicom.Dataset]) -> None:
        """STOW-RS; used by operators' tools and tests to load a PACS."""
        self._dicomweb.store_instances(list(datasets))


def _summary(ds: pydicom.Dataset) -> SeriesSummary:
    return SeriesSummary(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        body_part=str(ds.get("BodyPartExamined", "")),
        description=str(ds.get("SeriesDescription", "")),
        n_instances=int(ds.get("NumberOfSeriesRelatedInstances", 0) or 0),
    )


def _transient(study_uid: str, what: str, err: Exception) -> TransientError:
    return TransientError(
        f"study {study_uid}: PACS {what} failed ({type(err).__name__}: {err}); the job will be retried"
    )
