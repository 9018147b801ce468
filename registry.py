"""The Table 1 registry at the top level, for scripts and notebooks: ``from registry import get_model,
METHODS, build_pruner``. Everything lives in :mod:`engine.registry` (and the method rows in
:mod:`engine.methods_table`); this module only re-exports it."""

from engine.registry import (  # noqa: F401
    DATASET_NAMES,
    IMPORTANCES,
    METHODS,
    MODELS,
    PRUNERS,
    TABLE1_METHODS,
    MethodSpec,
    ModelSpec,
    PrunerKind,
    build_pruner,
    calibration_batches,
    get_dataset,
    get_method,
    get_model,
    model_spec,
    output_layers,
)

__all__ = ["DATASET_NAMES", "IMPORTANCES", "METHODS", "MODELS", "PRUNERS", "TABLE1_METHODS", "MethodSpec",
           "ModelSpec", "PrunerKind", "build_pruner", "calibration_batches", "get_dataset", "get_method", "get_model",
           "model_spec", "output_layers"]
