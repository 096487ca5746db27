"""SAM heads (prompt encoder, mask decoder) and `SamLite`, an encoder composed with them."""
