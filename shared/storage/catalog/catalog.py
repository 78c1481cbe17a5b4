"""The catalog: every instance medhash was told about, and where it is in the pipeline.

One entry point, :class:`Catalog`, made of one part per user, each in its own module with
the same SQL it always ran: :mod:`~shared.storage.catalog.instances` (the listener,
``medhash status``), :mod:`~shared.storage.catalog.pipeline` (the stages, the reconciler),
:mod:`~shared.storage.catalog.search` (the search service) and
:mod:`~shared.storage.catalog.training` (training on the archive),
:mod:`~shared.storage.catalog.dicomweb` (QIDO-RS and WADO-RS),
:mod:`~shared.storage.catalog.audit` (the audit trail),
:mod:`~shared.storage.catalog.forget` (forgetting a patient or a study). The row types are in
:mod:`~shared.storage.catalog.records`.
"""

from __future__ import annotations

from shared.storage.catalog.audit import AuditTrail
from shared.storage.catalog.dicomweb import DicomwebQueries
from shared.storage.catalog.forget import ForgetRecords
from shared.storage.catalog.instances import InstanceRecords
from shared.storage.catalog.pipeline import PipelineRecords
from shared.storage.catalog.search import SearchLookups
from shared.storage.catalog.training import TrainingSlices


class Catalog(InstanceRecords, PipelineRecords, SearchLookups, TrainingSlices, DicomwebQueries,
              AuditTrail, ForgetRecords):
    """Domain operations over a :class:`~shared.storage.catalog.db.Database`."""

    def close(self) -> None:
        self.database.close()
