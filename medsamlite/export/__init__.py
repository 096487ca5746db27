"""Export to CPU runtimes: `compile` (torch, lazily) and `load` (torch-free) with one precision policy.

```
compiled = medsamlite.export.compile(model, backend="openvino", precision="f32")   # cached on disk
compiled = medsamlite.export.load("exported/litemedsam_ov")                         # no torch imported
```
"""
from __future__ import annotations

from .cache import default_cache_dir
from .compile import cache_key, compile, export  # torch is imported only when compile/export run
from .compiled import BACKENDS, CompiledSam, load
from .precision import PRECISIONS, PrecisionWarning, cpu_summary, cpu_supports_bf16

__all__ = ["BACKENDS", "PRECISIONS", "CompiledSam", "PrecisionWarning", "cache_key", "compile",
           "cpu_summary", "cpu_supports_bf16", "default_cache_dir", "export", "load"]
