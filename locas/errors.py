"""User-facing errors: one line that says what was wrong and what to do."""


class LocasError(ValueError):
    """A mistake in the user's input (config, data, model, memory). Entry scripts print it as one line."""
