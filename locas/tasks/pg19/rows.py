"""PG-19's row kinds: kind → (the `Runs` frame they fill, the fields they always have beyond the stamped ones)."""

KINDS = {
    "window": ("windows", ["book_id", "window", "start", "scored_tokens", "nll_sum", "cuts", "train_loss", "seconds"]),
    "book": ("books", ["book_id", "title", "tokens", "scored_tokens", "nll_sum", "ppl", "seconds",
                       "memorize_seconds", "trainable_params", "error"]),
}
