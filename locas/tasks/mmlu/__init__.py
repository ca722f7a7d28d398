"""MMLU retention: adapt on a PG-19 book, then answer MMLU questions with and without the memory."""
