"""The audit trail's part of the catalog: who did what, appended, never changed.

One row per action: when, who (an API key's name, a calling AE title, ``cli:<user>``), what
(search, retrieve, thumbnail, instance, qido, stow, c-store, forget, audit), the UIDs it was
about, how many results it returned and how it ended. Patient identifiers are never written
here: a forget by PatientID records the patient's pseudonym (``patient:<patient_key>``),
so the trail can prove the forget happened without keeping what was forgotten. The table
refuses UPDATE and DELETE by trigger (migration 4), for every client of the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.storage.catalog.records import Tables

MAX_TARGETS = 100
"""UIDs kept per entry; a retrieve of a 3000-instance study records the study, not each one."""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    targets: list[str]
    result_count: int
    outcome: str
    detail: str | None


class AuditTrail(Tables):
    def record_audit(self, actor: str, action: str, targets: Sequence[str] = (),
                     result_count: int = 0, outcome: str = "ok",
                     detail: str | None = None) -> None:
        """Append one entry (durable: an audit entry is not something to derive again)."""
        kept = [str(target)[:256] for target in targets[:MAX_TARGETS]]
        if len(targets) > MAX_TARGETS:
            kept.append(f"... {len(targets) - MAX_TARGETS} more")
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO audit_log (at, actor, action, targets, result_count, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), actor[:128], action, json.dumps(kept), int(result_count), outcome,
                 None if detail is None else detail[:1000]),
            )

    def audit_entries(self, *, limit: int = 100, offset: int = 0, action: str | None = None,
                      actor: str | None = None, since: float | None = None,
                      until: float | None = None) -> tuple[list[AuditEntry], int]:
        """(entries newest first, total matching) for one page of the trail."""
        conditions: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("action", action), ("actor", actor)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            conditions.append("at >= ?")
            params.append(since)
        if until is not None:
            conditions.append("at < ?")
            params.append(until)
        where = " AND ".join(conditions)
        total = int(self.read(f"SELECT COUNT(*) FROM audit_log WHERE {where}", params)[0][0])
        rows = self.read(
            "SELECT id, at, actor, action, targets, result_count, outcome, detail FROM audit_log "
            f"WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset))
        entries = [AuditEntry(int(row[0]), float(row[1]), row[2], row[3], json.loads(row[4]),
                              int(row[5]), row[6], row[7]) for row in rows]
        return entries, total
