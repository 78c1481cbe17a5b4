"""``medhash forget`` and ``medhash audit``: removing a patient or a study, and who did what.

Both work on the catalog and the object store the ``MEDHASH_*`` settings name, as the
operator (recorded as ``cli:<user>``), without going through the search service.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shared.config import get_settings

console = Console(stderr=True)


def forget(
    patient_id: Annotated[str | None, typer.Option(help="Forget every instance of this PatientID.")] = None,
    study_uid: Annotated[str | None, typer.Option(help="Forget every instance of this study.")] = None,
    resume: Annotated[bool, typer.Option(help="Only finish the jobs left unfinished.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the indexers to drop the "
                                             "codes (0: do not wait).")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON.")] = False,
) -> None:
    """Forget a patient or a study: raw objects, slices, catalog rows and index entries.

    Searches stop returning it at once. The index entries go when each model version's
    indexer (`medhash indexer`, or `medhash serve`) applies the tombstones; this command
    waits for that and exits 0 only when nothing of it (nor of any earlier, unfinished
    forget) remains. Killed or timed out, it is safe to run again: the job resumes.
    """
    from shared.pipeline.wiring import Runtime
    from shared.storage.catalog.forget import ForgetJob, ForgetState

    if sum((patient_id is not None, study_uid is not None, resume)) != 1:
        raise typer.BadParameter("give exactly one of --patient-id, --study-uid and --resume")
    runtime = Runtime.from_settings(get_settings())
    try:
        forgetter = runtime.forgetter
        who = f"cli:{getpass.getuser()}"
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("deleting objects", total=None)

            def advance(count: int) -> None:
                progress.advance(task, count)

            # what an earlier, interrupted forget left undone comes first
            jobs: list[ForgetJob] = [forgetter.resume(job, advance)
                                     for job in runtime.catalog.forget_jobs(unfinished=True)]
            if patient_id is not None:
                jobs.append(forgetter.forget_patient(patient_id, who))
            elif study_uid is not None:
                jobs.append(forgetter.forget_study(study_uid, who))
        deadline = time.monotonic() + wait
        while any(job.state is not ForgetState.DONE for job in jobs) and time.monotonic() < deadline:
            time.sleep(1.0)
            jobs = [job if job.state is ForgetState.DONE else forgetter.resume(job) for job in jobs]
        if as_json:
            typer.echo(json.dumps([{**asdict(job), "state": job.state.value} for job in jobs]))
        for job in jobs:
            console.print(f"forget job {job.id} ({job.target}): {job.instances} instances, "
                          f"{job.objects} objects, {job.slices} slices: {job.state.value}")
        waiting = [job for job in jobs if job.state is not ForgetState.DONE]
        if waiting:
            holders = sorted({version[:12] for job in waiting
                              for version in forgetter.index_holders(job)})
            console.print(
                f"[red]{len(waiting)} job(s) not finished: rows and objects are gone and searches "
                f"no longer return them, but the index of model(s) {', '.join(holders) or '?'} "
                "still holds their codes. Run that model's indexer (`medhash indexer` or "
                "`medhash serve`), then `medhash forget --resume`.")
            raise typer.Exit(1)
    finally:
        runtime.close()


def audit(
    limit: Annotated[int, typer.Option(help="Entries to show (newest first).")] = 50,
    offset: Annotated[int, typer.Option(help="Entries to skip.")] = 0,
    action: Annotated[str | None, typer.Option(help="Only this action (search, retrieve, "
                                                    "thumbnail, stow, c-store, forget, ...).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this key name or `ae:TITLE`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the audit trail: who searched, retrieved, stored or forgot what, and when."""
    from shared.storage.catalog import open_catalog

    catalog = open_catalog(get_settings())
    try:
        entries, total = catalog.audit_entries(limit=limit, offset=offset, action=action,
                                               actor=actor)
        catalog.record_audit(f"cli:{getpass.getuser()}", "audit", [], len(entries))
    finally:
        catalog.close()
    if as_json:
        typer.echo(json.dumps({"total": total, "entries": [asdict(entry) for entry in entries]}))
        return
    table = Table(title=f"medhash audit trail ({len(entries)} of {total})")
    for column in ("time (UTC)", "actor", "action", "targets", "results", "outcome"):
        table.add_column(column)
    for entry in entries:
        targets = ", ".join(entry.targets[:3]) + (" ..." if len(entry.targets) > 3 else "")
        table.add_row(dt.datetime.fromtimestamp(entry.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      entry.actor, entry.action, targets, str(entry.result_count), entry.outcome)
    Console().print(table)
