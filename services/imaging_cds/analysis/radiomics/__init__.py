"""IBSI 1 conformant radiomics: image processing and every IBSI feature family for one region of interest.

``compute_features(image, mask, spacing, config)`` returns ``{feature key: (value, UCUM unit)}``; the keys and
their IBSI codings are in :data:`FEATURES`; :data:`IBSI_CONFIGURATIONS` holds the IBSI reference configurations.
The engine (scipy, scikit-image) is imported on first use, so reading the coding tables stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imaging_cds.analysis.radiomics.config import (
    IBSI_CONFIGURATIONS,
    ConfigError,
    Discretisation,
    RadiomicsConfig,
    config_from_mapping,
)
from imaging_cds.analysis.radiomics.features import AGGREGATIONS, FAMILIES, FEATURES, FeatureDef, unit_for

if TYPE_CHECKING:
    from imaging_cds.analysis.radiomics.engine import RadiomicsResult, compute_features, extract
    from imaging_cds.analysis.radiomics.processing import EmptyRoiError

__all__ = [
    "AGGREGATIONS",
    "FAMILIES",
    "FEATURES",
    "IBSI_CONFIGURATIONS",
    "ConfigError",
    "Discretisation",
    "EmptyRoiError",
    "FeatureDef",
    "RadiomicsConfig",
    "RadiomicsResult",
    "compute_features",
    "config_from_mapping",
    "extract",
    "unit_for",
]

_LAZY = {
    "RadiomicsResult": "engine",
    "compute_features": "engine",
    "extract": "engine",
    "EmptyRoiError": "processing",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
