"""Image encoders: each file registers its builders and owns the map from its reference keys to ours."""

from ..extras import require

require("torch", "medsamlite.encoders")
from . import efficientvit, repvit, swin, tinyvit  # noqa: F401  (registration side effects)

__all__: list[str] = []  # registration only: build encoders with medsamlite.create_model / list_encoders
