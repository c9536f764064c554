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

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.NOT_ANALYZABLE, JobState.FAILED)


class Priority(enum.Enum):
    ROUTINE = "routine"
    STAT = "stat"


@dataclass(frozen=True)
class StudyRef:
    """A study as the EHR names it: the FHIR ImagingStudy id and, when known, the DICOM Study Instance UID."""

    imaging_study_id: str
    study_uid: str = ""

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
    report_reference: str = ""
    attempts: int = 0
    created: float = 0.0
    updated: float = 0.0
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
            "attempts": str(self.attempts),
            "created": repr(self.created),
            "updated": repr(self.updated),
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
            attempts=int(fields.get("attempts", "0")),
            created=float(fields.get("created", "0")),
            updated=float(fields.get("updated", "0")),
            stage_seconds=_float_map(json.loads(fields.get("stage_seconds", "{}"))),
        )

    def with_state(self, state: JobState, now: float, **changes: Any) -> Job:
        return replace(self, state=state, updated=now, **changes)


def _float_map(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items()}
