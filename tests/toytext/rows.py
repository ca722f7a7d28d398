"""The toy task's row kind: kind → (the `Runs` frame it fills, its fields beyond the stamped ones)."""

KINDS = {"text": ("texts", ["doc_id", "tokens", "scored_tokens", "nll_sum", "ppl", "error"])}
