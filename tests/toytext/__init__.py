"""A fourth task in one folder, for tests/test_toy_task.py: a folder of plain-text documents, each adapted on
online and scored window by window as PG-19's books are, its rows of a kind of its own (`text`). Registered
by one line, `locas.tasks.TASKS["toytext"] = "tests.toytext"`."""
