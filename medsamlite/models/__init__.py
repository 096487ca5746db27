"""SAM heads (prompt encoder, mask decoder) and `SamLite`, an encoder composed with them."""

from ..extras import require

require("torch", "medsamlite.models")
