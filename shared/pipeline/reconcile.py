"""The reconciler: the catalog says what is unfinished, so nothing depends on a queue message.

Redis keeps nothing on disk here, a worker can be killed mid-task and a publish can fail; in
each case an instance sits in a non-final state with no message for it. The reconciler
re-enqueues every instance that has sat in such a state longer than
``MEDHASH_RECONCILE_AFTER_S``; the stages are idempotent, so an extra message is harmless,
and each stage counts the attempts it starts, failing an instance that keeps killing its
worker (see :class:`shared.pipeline.preprocess.Preprocessor`). It also runs the IQR cleaning of
series that became stable, resumes forget jobs a crash left unfinished, and applies the
retention period (``MEDHASH_RETENTION_DAYS``).
"""

from __future__ import annotations

import logging
import time

from shared.background import Periodic
from shared.config import Settings
from shared.metrics import INSTANCES
from shared.pipeline.forget import Forgetter
from shared.pipeline.preprocess import PreprocessOptions, clean_stable_series
from shared.pipeline.queues import StageHost
from shared.pipeline.states import TRANSITIONS
from shared.storage.catalog import Catalog, CatalogUnavailable

log = logging.getLogger("medhash.reconciler")

RETENTION_CHECK_S = 3600.0
"""How often the retention period is applied (it reads every study's newest reception time);
the first round after a start applies it at once."""


class Reconciler:
    def __init__(self, catalog: Catalog, host: StageHost, settings: Settings,
                 forgetter: Forgetter) -> None:
        self.catalog = catalog
        self.forgetter = forgetter
        self.host = host
        self.settings = settings
        self.thresholds = PreprocessOptions.from_settings(settings).thresholds
        self._retention_checked = -RETENTION_CHECK_S
        self._loop = Periodic("reconciler", settings.reconcile_interval_s, self.run_once,
                              logger=log, expected=(CatalogUnavailable,))

    def run_once(self) -> int:
        """One scan; returns how many instances were re-enqueued."""
        resent = 0
        for step in TRANSITIONS:
            state, stage = step.source, step.stage
            if stage.needs_model and self.settings.model is None:
                continue  # no model configured: nothing consumes encode/index, let them wait
            for instance in self.catalog.stale(state, self.settings.reconcile_after_s):
                self.catalog.touch(instance.id)
                self.host.enqueue(stage, instance.id)
                log.info(
                    "re-enqueued to %s after %.0f s in %s", stage.value,
                    self.settings.reconcile_after_s, state.value,
                    extra={"stage": "reconciler", "sop_instance_uid": instance.sop_instance_uid,
                           "instance_id": instance.id},
                )
                resent += 1
        clean_stable_series(self.catalog, self.thresholds, self.settings.series_stable_s)
        if self.settings.retention_days is not None and (
                time.monotonic() - self._retention_checked >= RETENTION_CHECK_S):
            self._retention_checked = time.monotonic()
            self.forgetter.forget_expired(self.settings.retention_days)
        self.forgetter.resume_unfinished()
        for state_name, count in self.catalog.counts_by_state().items():
            INSTANCES.labels(state=state_name).set(count)
        return resent

    def start(self) -> None:
        """Scan every ``reconcile_interval_s`` on a background thread."""
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
