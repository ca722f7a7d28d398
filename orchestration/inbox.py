"""The units given to a worker and not yet taken. The driver gives (on one thread of the actor) while the
worker's runner takes, one unit each time a slot frees (on another): the refill is continuous, with no
waiting for a whole batch to finish.

The driver answers every unit the worker finishes with one `give` (perhaps of no unit: its decision). A
runner looking for a unit to fill a slot that just freed waits for that answer (at most DECISION_WAIT
seconds) instead of starting its next step without it: the new unit joins at once, not a step later.
"""
from __future__ import annotations

import threading
from collections import deque

from locas.contract import Unit
from locas.documents import Source

DECISION_WAIT = 1.0


class Inbox:
    """Units in the order given; `group(key)` is the source of the consecutive units of one batch key."""

    def __init__(self):
        self._units: deque[Unit] = deque()
        self._closed = False
        self._changed = threading.Condition()
        self.answered = 0  # units the worker has finished
        self.decided = 0  # the driver's answers to them

    def put(self, units: list[Unit], answer: bool = False) -> None:
        """Units to take; `answer`: this is the driver's answer to a unit the worker finished."""
        with self._changed:
            self._units.extend(units)
            self.decided += answer
            self._changed.notify_all()

    def finished_one(self) -> None:
        with self._changed:
            self.answered += 1

    def close(self) -> None:
        """No more units will come: takers stop waiting once the inbox is empty."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def head(self) -> Unit | None:
        """The next unit (left in place), waiting for one; None once the inbox is closed and empty."""
        with self._changed:
            self._changed.wait_for(lambda: self._units or self._closed)
            return self._units[0] if self._units else None

    def group(self, key: tuple) -> Source:
        inbox = self

        class Group(Source):
            def take(self, wait: bool) -> Unit | None:
                with inbox._changed:
                    inbox._changed.wait_for(lambda: inbox._units or inbox._closed or inbox.decided >= inbox.answered,
                                            timeout=DECISION_WAIT)
                    while True:
                        if inbox._units and inbox._units[0].batch_key == key:
                            return inbox._units.popleft()
                        if inbox._units or inbox._closed or not wait:
                            return None  # another group is next, or nothing more comes, or nothing now
                        inbox._changed.wait()

        return Group()
