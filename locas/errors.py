"""User-facing errors, and the one shape a failure takes in the results: one line that says what was wrong
(the error row that carries it is `locas.contract.error_row`)."""
from __future__ import annotations


class LocasError(ValueError):
    """A mistake in the user's input (config, data, model, memory). Entry scripts print it as one line."""


def one_line(error: BaseException | str, limit: int = 1000) -> str:
    """A failure as one line of at most `limit` characters: a LocasError's (or a string's) own words, else
    `TypeName: message`."""
    text = error if isinstance(error, str) else str(error)
    text = " ".join(text.split()) or type(error).__name__
    if isinstance(error, BaseException) and not isinstance(error, LocasError):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
