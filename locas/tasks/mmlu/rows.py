"""MMLU's row kinds: kind → (the `Runs` frame they fill, the fields they always have beyond the stamped ones)."""

KINDS = {
    "mmlu": ("mmlu", ["book_id", "variant", "subject", "question_id", "answer", "prediction", "correct"]),
}
