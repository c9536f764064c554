"""Errors a user can act on.

Each names the study by its Study Instance UID (never the patient), says what was expected and what was found,
and its type says what happens next: a ``NotAnalyzableError`` ends the job with an outcome and no report; a
``TransientError`` is retried; anything else fails the job for a person to look at.
"""

from __future__ import annotations


class ImagingCdsError(Exception):
    """Base class; ``str(err)`` is safe to log (no patient-identifying data)."""


class NotAnalyzableError(ImagingCdsError):
    """The study cannot be analysed by the model. Not retried. ``then`` says what was charted instead: nothing, or
    a cancelled report that tells the clinician why the AI did not run."""

    def __init__(self, study_uid: str, reason: str, then: str = "no report written") -> None:
        self.study_uid = study_uid
        self.reason = reason
        super().__init__(f"study {study_uid}: not analysable: {reason}; {then}")


class TransientError(ImagingCdsError):
    """A remote system was unavailable or overloaded; the job is retried later."""


class InvalidNotificationError(ImagingCdsError):
    """A webhook or API request that does not describe an ImagingStudy we can queue; answered with a 4xx."""


class ModelConfigurationError(ImagingCdsError):
    """A model in the repository that the worker cannot use as configured (no post-processing for it, a manifest
    that contradicts its outputs); the job fails for a person to fix the model folder, then replay."""
