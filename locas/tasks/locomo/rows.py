"""LoCoMo's row kinds: kind → (the `Runs` frame they fill, the fields they always have beyond the stamped ones)."""

KINDS = {
    "conversation": ("conversations", ["conversation_id", "tokens", "windows", "seconds", "trainable_params"]),
    "qa": ("qa", ["conversation_id", "question_id", "category", "question", "gold", "prediction", "f1",
                  "f1_adversarial_report", "seconds"]),
}
