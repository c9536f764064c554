"""Jobs as data: what was asked, where it stands, and why."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NOT_ANALYZABLE = "not_analyzable"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.NOT_ANALYZABLE, JobState.FAILED, JobState.CANCELLED)


class Priority(enum.Enum):
    ROUTINE = "routine"
    STAT = "stat"


@dataclass(frozen=True)
class StudyRef:
    """A study as the EHR names it: the FHIR ImagingStudy id and, when known, the DICOM Study Instance UID."""

    imaging_study_id: str
    study_uid: str = ""
    orders: tuple[str, ...] = ()  # 'ServiceRequest/id' the study is based on (for its priority); not stored

    def dedup_key(self) -> str:
        """Stable key for 'the same study' (its FHIR id): replays and id-only notifications map to one job."""
        return hashlib.sha256(self.imaging_study_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Job:
    job_id: str
    study: StudyRef
    state: JobState = JobState.QUEUED
    priority: Priority = Priority.ROUTINE
    outcome: str = ""
    report_reference: str = ""  # the first model's report; all of them in report_references
    report_references: tuple[str, ...] = ()  # "DiagnosticReport/<id>" of each model that wrote one
    attempts: int = 0  # runs that failed for a transient reason (PACS, Triton or EHR unavailable)
    deliveries: int = 0  # times a worker took the job, crashed runs included (bounds poison messages)
    created: float = 0.0
    updated: float = 0.0
    not_before: float = 0.0  # a delayed job (backoff, waiting for images) is not run before this time
    observed_instances: int = -1  # stability window: instances the PACS held when last checked...
    stable_since: float = 0.0  # ...and since when that count has not changed
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_redis(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "imaging_study_id": self.study.imaging_study_id,
            "study_uid": self.study.study_uid,
            "state": self.state.value,
            "priority": self.priority.value,
            "outcome": self.outcome,
            "report_reference": self.report_reference,
            "report_references": " ".join(self.report_references),
            "attempts": str(self.attempts),
            "deliveries": str(self.deliveries),
            "created": repr(self.created),
            "updated": repr(self.updated),
            "not_before": repr(self.not_before),
            "observed_instances": str(self.observed_instances),
            "stable_since": repr(self.stable_since),
            "stage_seconds": json.dumps(self.stage_seconds, sort_keys=True),
        }

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> Job:
        return cls(
            job_id=fields["job_id"],
            study=StudyRef(fields["imaging_study_id"], fields.get("study_uid", "")),
            state=JobState(fields["state"]),
            priority=Priority(fields.get("priority", "routine")),
            outcome=fields.get("outcome", ""),
            report_reference=fields.get("report_reference", ""),
            report_references=tuple(fields.get("report_references", "").split()),
            attempts=int(fields.get("attempts", "0")),
            deliveries=int(fields.get("deliveries", "0")),
            created=float(fields.get("created", "0")),
            updated=float(fields.get("updated", "0")),
            not_before=float(fields.get("not_before", "0")),
            observed_instances=int(fields.get("observed_instances", "-1")),
            stable_since=float(fields.get("stable_since", "0")),
            stage_seconds=_float_map(json.loads(fields.get("stage_seconds", "{}"))),
        )

    def with_state(self, state: JobState, now: float, **changes: Any) -> Job:
        return replace(self, state=state, updated=now, **changes)


def _float_map(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items()}
