"""The torch-free runtime: everything on the inference path that is not the network's training side.

Case I/O and validation (task `.npz`, NIfTI volumes, DICOM series), preprocessing, the `Engine` protocol, the
`Predictor` (2D multi-box, 3D propagation with a slice cache), compiled folders on OpenVINO / ONNX Runtime,
routing, metrics. Nothing here imports torch, timm, peft, monai or scipy (`tests/test_architecture.py`); the
torch side may import this package.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "Engine": "engine", "as_engine": "engine",
    "Case": "npz", "CaseError": "npz", "read_case": "npz", "write_segs": "npz",
    "CaseResult": "predictor", "Predictor": "predictor", "Click": "predictor", "Interaction": "predictor",
    "CompiledSam": "compiled", "load": "compiled",
    "Router": "router", "RoutedPredictor": "routed",
    "evaluate_case": "metrics", "dsc": "metrics", "nsd": "metrics",
    "PrecisionWarning": "precision", "cpu_summary": "precision", "cpu_supports_bf16": "precision",
    "Volume": "volumes", "read_volume": "volumes", "predict_volume": "volumes", "write_label_map": "volumes",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
