"""Receiving instances, for the listener, ``medhash status`` and the instance routes: record
(idempotent on UID + sha256), find a duplicate, look up versions, count by state."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import fields

from shared.pipeline.states import InstanceState
from shared.storage.catalog.records import (
    SELECT_INSTANCE,
    Instance,
    NewInstance,
    RecordOutcome,
    Tables,
    instance_of,
)


class InstanceRecords(Tables):
    _pseudonym_secret: bytes | None = None

    def patient_key(self, patient_id: str | None, issuer: str | None = None) -> str | None:
        """The pseudonym of a patient: HMAC-SHA256 of ``issuer\\patient_id`` under a random
        secret this catalog made once (32 hex digits); None without a PatientID.

        Equal patients get equal keys in one deployment, so filters and the audit trail can
        say "same patient" without the identifier; without the catalog's secret a key cannot
        be turned back into a PatientID by trying candidates.
        """
        if not patient_id:
            return None
        message = f"{issuer or ''}\\{patient_id}".encode()
        return hmac.new(self._secret(), message, hashlib.sha256).hexdigest()[:32]

    def _secret(self) -> bytes:
        if self._pseudonym_secret is None:
            with self.database.transaction() as tx:
                tx.execute("INSERT INTO catalog_secrets (name, value) VALUES (?, ?) "
                           "ON CONFLICT (name) DO NOTHING", ("patient_key", secrets.token_hex(32)))
                rows = tx.execute("SELECT value FROM catalog_secrets WHERE name = ?",
                                  ("patient_key",))
            self._pseudonym_secret = bytes.fromhex(str(rows[0][0]))
        return self._pseudonym_secret

    def find_duplicate(self, sop_instance_uid: str, sha256: str) -> int | None:
        """The id of the row holding exactly these bytes for this UID, if there is one."""
        rows = self.read(
            "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
            (sop_instance_uid, sha256),
        )
        return int(rows[0][0]) if rows else None

    def record_received(self, new: NewInstance) -> RecordOutcome:
        """Insert a received instance (idempotent on UID + sha256) and make it current."""
        now = time.time()
        columns = [field.name for field in fields(NewInstance)]
        values = [getattr(new, name) for name in columns]
        columns += ["received_at", "state", "state_changed_at", "is_current"]
        values += [now, InstanceState.RECEIVED.value, now, True]
        with self.database.transaction() as tx:
            inserted = tx.execute(
                f"INSERT INTO instances ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)}) "
                "ON CONFLICT (sop_instance_uid, sha256) DO NOTHING RETURNING id",
                values,
            )
            if not inserted:
                existing = tx.execute(
                    "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
                    (new.sop_instance_uid, new.sha256),
                )
                return RecordOutcome(instance_id=int(existing[0][0]), duplicate=True)
            instance_id = int(inserted[0][0])
            older = tx.execute(
                "SELECT id FROM instances WHERE sop_instance_uid = ? AND id <> ? AND is_current",
                (new.sop_instance_uid, instance_id),
            )
            if older:
                tx.execute(
                    "UPDATE instances SET is_current = FALSE WHERE sop_instance_uid = ? AND id <> ?",
                    (new.sop_instance_uid, instance_id),
                )
        return RecordOutcome(
            instance_id=instance_id,
            duplicate=False,
            superseded=tuple(int(row[0]) for row in older),
        )

    def get(self, instance_id: int) -> Instance | None:
        rows = self.read(f"{SELECT_INSTANCE} WHERE id = ?", (instance_id,))
        return instance_of(rows[0]) if rows else None

    def versions(self, sop_instance_uid: str) -> list[Instance]:
        """Every stored version of an instance, newest first."""
        rows = self.read(
            f"{SELECT_INSTANCE} WHERE sop_instance_uid = ? ORDER BY id DESC",
            (sop_instance_uid,),
        )
        return [instance_of(row) for row in rows]

    def current(self, sop_instance_uid: str) -> Instance | None:
        """The current version of an instance (the newest bytes received)."""
        versions = self.versions(sop_instance_uid)
        return next((version for version in versions if version.is_current), None)

    def counts_by_state(self) -> dict[str, int]:
        """Number of current instances in each state (every state listed, zeros included)."""
        rows = self.read(
            "SELECT state, COUNT(*) FROM instances WHERE is_current GROUP BY state"
        )
        counts = {state.value: 0 for state in InstanceState}
        counts.update({str(state): int(count) for state, count in rows})
        return counts
