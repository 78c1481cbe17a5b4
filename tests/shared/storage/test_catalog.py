"""The catalog on SQLite and PostgreSQL: migrations, idempotent recording, versions, outages."""

from __future__ import annotations

import dataclasses

import pytest

from shared.config import Settings
from shared.storage.catalog import (
    CatalogUnavailable,
    InstanceState,
    NewInstance,
    open_catalog,
)
from shared.storage.catalog.db import migrate
from shared.storage.catalog.migrations import LATEST_VERSION
from testbed.servers import PostgresServer

NEW = NewInstance(
    sop_instance_uid="1.2.3.4",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    sha256="a" * 64,
    size_bytes=1234,
    object_key="raw/1/2/1.2.3.4.aaaa.dcm",
    study_instance_uid="1.2",
    series_instance_uid="1.2.3",
    modality="CT",
    calling_ae="PACS",
)


def test_migrations_apply_once(any_settings: Settings) -> None:
    catalog = open_catalog(any_settings)
    assert migrate(catalog.database) == LATEST_VERSION
    catalog.close()
    reopened = open_catalog(any_settings)  # a second start finds the schema in place
    assert reopened.counts_by_state()["received"] == 0
    reopened.close()


def test_same_bytes_are_one_row_other_bytes_a_new_current_version(any_settings: Settings) -> None:
    catalog = open_catalog(any_settings)
    first = catalog.record_received(NEW)
    again = catalog.record_received(NEW)
    assert not first.duplicate and again.duplicate
    assert again.instance_id == first.instance_id
    assert catalog.find_duplicate(NEW.sop_instance_uid, NEW.sha256) == first.instance_id

    changed = catalog.record_received(dataclasses.replace(NEW, sha256="b" * 64, object_key="raw/x"))
    assert changed.superseded == (first.instance_id,)
    versions = catalog.versions(NEW.sop_instance_uid)
    assert [v.id for v in versions] == [changed.instance_id, first.instance_id]
    assert [v.is_current for v in versions] == [True, False]
    current = catalog.current(NEW.sop_instance_uid)
    assert current is not None and current.sha256 == "b" * 64
    assert current.modality == "CT" and current.calling_ae == "PACS"
    assert catalog.counts_by_state() == {
        "received": 1, "preprocessed": 0, "encoded": 0, "indexed": 0, "failed": 0, "skipped": 0
    }
    assert catalog.transition(changed.instance_id, InstanceState.RECEIVED, InstanceState.FAILED,
                              reason="no codec")
    failed = catalog.get(changed.instance_id)
    assert failed is not None and failed.state is InstanceState.FAILED and failed.reason == "no codec"
    catalog.close()


@pytest.mark.integration
def test_postgres_down_is_unavailable_then_recovers(
    distributed_settings: Settings, postgres_server: PostgresServer
) -> None:
    catalog = open_catalog(distributed_settings)
    catalog.record_received(NEW)
    with postgres_server.stopped():
        with pytest.raises(CatalogUnavailable):
            catalog.record_received(dataclasses.replace(NEW, sop_instance_uid="9.9"))
        with pytest.raises(CatalogUnavailable):
            catalog.counts_by_state()
    assert catalog.record_received(dataclasses.replace(NEW, sop_instance_uid="9.9")).duplicate is False
    assert catalog.counts_by_state()["received"] == 2
    catalog.close()


@pytest.mark.integration
def test_the_audit_trail_is_append_only_and_pseudonyms_are_stable(any_settings: Settings) -> None:
    catalog = open_catalog(any_settings)
    try:
        catalog.record_audit("someone", "search", ["1.2.3"], 1)
        for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
            with pytest.raises(Exception, match="append-only"), catalog.database.transaction() as tx:
                tx.execute(statement)
        entries, total = catalog.audit_entries()
        assert total == 1 and entries[0].actor == "someone" and entries[0].targets == ["1.2.3"]
        key = catalog.patient_key("PAT-1")
        assert key is not None and len(key) == 32 and "PAT" not in key
        assert catalog.patient_key("PAT-1", None) == key != catalog.patient_key("PAT-1", "ISSUER")
        assert catalog.patient_key(None) is None
    finally:
        catalog.close()
    reopened = open_catalog(any_settings)  # the secret is the catalog's, not the process's
    try:
        assert reopened.patient_key("PAT-1") == key
    finally:
        reopened.close()
