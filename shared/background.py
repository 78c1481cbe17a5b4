"""Background work every long-running process shares: waiting for a stop signal, and one
periodic loop on a daemon thread.

The reconciler's scan, the indexer's flush, the search service's index refresh and the local
stack's supervisor are all "do this every N seconds until told to stop, and never die of one
bad round"; writing that loop once keeps their stop and error behaviour the same.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("medhash.background")


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (Ctrl-C, ``docker stop``, a pod's termination)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


@dataclass
class Periodic:
    """Calls ``tick`` every ``interval_s`` seconds on a daemon thread until :meth:`stop`.

    A tick that raises is logged and the next one runs on schedule: a loop that died of one
    catalog outage would silently end the pipeline's self-healing. Errors of the ``expected``
    kinds (an outage that passes) log one warning line (with ``extra``, the log fields an
    operator greps for); anything else logs its traceback.
    """

    name: str
    interval_s: float
    tick: Callable[[], object]
    logger: logging.Logger = log
    expected: tuple[type[Exception], ...] = ()
    extra: Mapping[str, object] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Start ticking; the first tick comes one interval from now."""
        self._thread = threading.Thread(target=self._run, name=f"medhash-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ticking; waits up to ``timeout_s`` for a tick in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except self.expected as exc:
                self.logger.warning("%s round failed, retrying in %g s: %s", self.name,
                                    self.interval_s, exc, extra=dict(self.extra))
            except Exception:  # noqa: BLE001 - logged with its traceback, next round runs
                self.logger.exception("%s round failed, retrying in %g s", self.name,
                                      self.interval_s, extra=dict(self.extra))
