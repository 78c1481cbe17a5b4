"""Forgetting a patient or a study: raw objects, slices, catalog rows and index entries, as a
job recorded in the catalog that any crash resumes.

The steps, and why in this order:

1. **Catalog** (one transaction, :meth:`~shared.storage.catalog.forget.ForgetRecords.begin_forget`):
   the job with every object key and slice id it must remove, and the deletion of the
   instances' codes, slices and rows. From here on nothing is found any more: search results
   are checked against the catalog, so even a searcher on an index generation from before the
   forget drops the slices; WADO-RS and QIDO-RS read the catalog.
2. **Objects**: every raw object and every slice object is deleted, and every object under
   the raw object's slice folder (a preprocess that ran concurrently may have written one the
   catalog never recorded). Items are marked done in batches; a restart deletes the rest
   (deleting a missing object is not an error).
3. **Index**: each model version's indexer (the single writer of its index) applies the
   job's slice ids as tombstones, then compacts twice, so that no generation kept in the store
   (the newest two) references a segment that held their codes
   (:meth:`shared.pipeline.index.Indexer.flush`). The job checks the kept generations itself
   and is done only when none of them holds a code of it; an indexer that is not running
   leaves the job waiting in this step, and it completes once the indexer runs.

``medhash forget`` runs the steps and waits for the indexers; the reconciler resumes any job
left unfinished (a killed ``medhash forget``, a crashed service) and, with
``MEDHASH_RETENTION_DAYS``, forgets studies whose newest instance is older than that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from shared.index.format import (
    decode_delta,
    decode_shard,
    generations,
    list_model_versions,
    read_manifest,
)
from shared.index.writer import KEEP_GENERATIONS
from shared.metrics import FORGET_JOBS, FORGOTTEN_INSTANCES
from shared.pipeline.preprocess import slice_prefix
from shared.storage.catalog import Catalog
from shared.storage.catalog.forget import ForgetJob, ForgetState, Selector
from shared.storage.objectstore import ObjectNotFound, ObjectStore

log = logging.getLogger("medhash.forget")

BATCH = 100
"""Objects deleted between two progress marks in the catalog."""


class Forgetter:
    def __init__(self, store: ObjectStore, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog
        self._held: dict[tuple[int, str], int] = {}
        """(job, model version) -> the newest generation found still holding a code of the
        job: not read again until a newer generation is published."""

    def forget_patient(self, patient_id: str, requested_by: str) -> ForgetJob:
        """Start (and run as far as it goes now) the job forgetting every instance of a
        PatientID; the job and the audit trail name the patient only by pseudonym."""
        target = f"patient:{self.catalog.patient_key(patient_id)}"
        return self._begin("patient", "patient_id", patient_id, target, requested_by)

    def forget_study(self, study_instance_uid: str, requested_by: str,
                     selector: Selector = "study") -> ForgetJob:
        return self._begin(selector, "study_instance_uid", study_instance_uid,
                           f"study:{study_instance_uid}", requested_by)

    def _begin(self, selector: Selector, column: str, value: str, target: str,
               requested_by: str) -> ForgetJob:
        job = self.catalog.begin_forget(selector, column, value, target, requested_by)
        FORGET_JOBS.labels("started").inc()
        FORGOTTEN_INSTANCES.inc(job.instances)
        self.catalog.record_audit(requested_by, "forget", [target], job.instances,
                                  detail=f"job {job.id}: {job.objects} objects, {job.slices} slices")
        log.info("forget job %d (%s): %d instances, %d objects, %d slices", job.id, target,
                 job.instances, job.objects, job.slices, extra={"stage": "forget"})
        return self.resume(job)

    def resume(self, job: ForgetJob, progress: Callable[[int], None] | None = None) -> ForgetJob:
        """Run what is left of ``job``; returns its state now (``index`` while an indexer has
        yet to apply its tombstones). Idempotent: any step may be repeated after a crash."""
        if job.state is ForgetState.OBJECTS:
            self._delete_objects(job, progress)
            self.catalog.set_forget_state(job.id, ForgetState.INDEX)
            FORGET_JOBS.labels("objects_deleted").inc()
        if self.catalog.forget_job(job.id).state is ForgetState.INDEX:  # type: ignore[union-attr]
            pending = self.index_holders(job)
            if not pending:
                self.catalog.set_forget_state(job.id, ForgetState.DONE)
                FORGET_JOBS.labels("done").inc()
                log.info("forget job %d done: nothing of %s remains", job.id, job.target,
                         extra={"stage": "forget"})
        found = self.catalog.forget_job(job.id)
        assert found is not None
        return found

    def resume_unfinished(self) -> list[ForgetJob]:
        """Resume every unfinished job (the reconciler's round); returns them as they are now."""
        return [self.resume(job) for job in self.catalog.forget_jobs(unfinished=True)]

    def _delete_objects(self, job: ForgetJob, progress: Callable[[int], None] | None) -> None:
        keys = self.catalog.forget_items(job.id, "object")
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            for key in batch:
                self.store.delete(key)
                if key.startswith("raw/"):
                    for derived in list(self.store.list(slice_prefix(key))):
                        self.store.delete(derived)
            self.catalog.mark_forget_items_done(job.id, "object", batch)
            if progress is not None:
                progress(len(batch))

    def index_holders(self, job: ForgetJob) -> list[str]:
        """Model versions whose kept index generations still hold a code of the job's slices.

        A version whose indexer already reported the tombstones applied but still holds one
        (a code added after the removal by a race) is asked to apply them again.
        """
        ids = np.array(sorted(int(value) for value in
                              self.catalog.forget_items(job.id, "slice", pending_only=False)),
                       dtype=np.int64)
        if not len(ids):
            return []
        holders = []
        for model_version in list_model_versions(self.store):
            newest = generations(self.store, model_version)[-1]
            if self._held.get((job.id, model_version)) == newest:
                holders.append(model_version)  # nothing published since it last held one
                continue
            if self._holds_any(model_version, ids):
                holders.append(model_version)
                self._held[(job.id, model_version)] = newest
                self.catalog.clear_removals_applied(job.id, model_version)
        return holders

    def _holds_any(self, model_version: str, ids: np.ndarray) -> bool:
        """Whether a segment of a kept generation stores a code of any of ``ids``."""
        for generation in generations(self.store, model_version)[-KEEP_GENERATIONS:]:
            try:
                manifest = read_manifest(self.store, model_version, generation)
                for shard in manifest.shards:
                    stored = decode_shard(self.store.get(shard.key), manifest.bits, shard.key).ids
                    if np.isin(ids, stored).any():
                        return True
                for delta in manifest.deltas:
                    added, _, _ = decode_delta(self.store.get(delta.key), manifest.bits, delta.key)
                    if np.isin(ids, added).any():
                        return True
            except ObjectNotFound:
                return True  # collected while read: a newer generation exists, look again later
        return False

    def forget_expired(self, retention_days: float, now: float | None = None) -> list[ForgetJob]:
        """Forget every study whose newest instance was received more than ``retention_days``
        ago (``MEDHASH_RETENTION_DAYS``)."""
        cutoff = (now if now is not None else time.time()) - retention_days * 86400
        return [self.forget_study(study, "retention", selector="retention")
                for study in self.catalog.studies_received_before(cutoff)]
