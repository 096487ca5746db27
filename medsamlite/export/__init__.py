"""Export to CPU runtimes: `compile` a torch model into the cache and `export` it as a folder (torch side).

```
compiled = medsamlite.export.compile(model, backend="openvino", precision="f32")   # cached on disk
medsamlite.export.export(model, "exported/litemedsam_ov")                          # a folder to ship
compiled = medsamlite.runtime.load("exported/litemedsam_ov")                       # torch-free
```
"""
from __future__ import annotations

from ..extras import require

require("torch", "medsamlite.export (torch to ONNX to a runtime)", ("torch", "onnx"))

from .cache import default_cache_dir
from .compile import cache_key, compile, export

__all__ = ["cache_key", "compile", "default_cache_dir", "export"]
