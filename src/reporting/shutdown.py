"""How the two workers stop on SIGTERM or SIGINT: the first lets the work in hand finish, the
second abandons it at once.

The first signal sets the loop's `stop` event (and calls `wake`, so a loop asleep until its next
turn notices now). The work in hand, a tick or an export, usually ends within seconds, and its
result is kept. A second signal means the operator will not wait (a tick stuck behind a lock, an
export hanging on its storage): it raises KeyboardInterrupt in the main thread. psycopg turns
that into a cancel of the running statement, the transaction rolls back, and nothing half done
is kept; each worker's own recovery takes over (see each worker's docstring). Either way the
process returns from its loop and exits normally, so the embedded PostgreSQL is released
(NOTES.md).
"""

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(
    stop: threading.Event, *, finishing: str, wake: Callable[[], None] | None = None
) -> Iterator[None]:
    """While inside: SIGTERM/SIGINT set `stop` (then call `wake`); a second one raises
    KeyboardInterrupt. `finishing` names the work let finish, for the log ("the tick")."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            f"stopping after {finishing} in hand (send the signal again to stop at once)",
            extra={"signal": signal.Signals(signum).name},
        )
        stop.set()
        if wake is not None:
            wake()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
