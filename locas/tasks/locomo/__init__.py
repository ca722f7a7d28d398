"""LoCoMo: adapt on a long conversation, then answer its questions (F1 per category)."""
