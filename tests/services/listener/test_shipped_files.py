"""Every DICOM file pydicom and pydicom-data ship, sent by dcmtk's dcmsend and storescu as they are.

No profile, no options: each sender proposes what it proposes by default (dcmsend: the file's
own syntax plus uncompressed fallbacks in one context; storescu: uncompressed syntaxes only,
in two contexts per SOP class), one file per association, as a PACS forwarding what it holds
would. The listener's negotiation decides what arrives, so this is where its promises show:

* every file ends in a definite state (Success, a refusal with a status, or a sender that
  says it cannot send the file), and the listener keeps serving;
* every Success is a catalog row whose object holds the file's identity and pixel data;
* every Success is a catalog row whose dataset is byte for byte the file's, or byte for byte
  what dcmtk itself makes of the file in the stored syntax (``dcmconv -p``: dcmtk drops
  trailing padding, recalculates group lengths, repairs bad VRs when it re-encodes for the
  wire): medhash never alters a byte, whichever the sender sent;
* whenever the listener accepted the file's own transfer syntax, the instance is stored in
  it;
* where the listener's order made the sender convert (dcmsend offers Explicit VR LE beside an
  implicit or big-endian file's own syntax in one context; storescu pairs Big Endian with
  Implicit VR LE), the stored syntax is the one the order prefers: the documented order, not
  an accident. Counts of every kind are printed.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID

from services.listener.negotiation import default_transfer_syntaxes
from shared.config import Settings
from shared.storage.catalog import Instance
from tests.conftest import RunningListener, dcmtk, dcmtk_env
from tests.services.listener.dicomtools import dataset_bytes, dcmtk_rewrite
from tests.shipped import shipped_files
from testbed.catalog_audit import all_instances

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RANK = {uid: rank for rank, uid in enumerate(default_transfer_syntaxes())}


def command(sender: str, path: Path, port: int) -> list[str]:
    """The sender's default invocation (verbose, so its log says what it did)."""
    return [dcmtk(sender), "-v", "-aet", "DCMTKSCU", "-aec", "MEDHASH", "127.0.0.1", str(port), str(path)]


@dataclass
class Offer:
    abstract_syntax: str
    offered: list[str]
    accepted: str | None


class Negotiations(logging.Handler):
    """Collects the listener's DEBUG record of every proposed context (Negotiator.on_accepted)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.offers: list[Offer] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "offered"):
            self.offers.append(Offer(record.abstract_syntax, record.offered, record.accepted))  # type: ignore[attr-defined]


def preferred_over(offer: Offer, syntax: str) -> bool:
    """The context offered ``syntax`` and also one the listener ranks higher."""
    return syntax in offer.offered and any(RANK.get(other, 99) < RANK.get(syntax, 99) for other in offer.offered)


def name(uid: str) -> str:
    return UID(uid).name


@pytest.mark.parametrize("sender", ["dcmsend", "storescu"])
def test_shipped_files_with_default_proposals(
    sender: str,
    embedded_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    tmp_path: Path,
) -> None:
    listener = listener_factory(embedded_settings)
    catalog = listener.runtime.catalog
    negotiations = Negotiations()
    listener_log = logging.getLogger("medhash.listener")
    previous_level = listener_log.level
    listener_log.setLevel(logging.DEBUG)
    listener_log.addHandler(negotiations)
    outcomes: Counter[str] = Counter()
    stored: Counter[str] = Counter()
    refused: list[str] = []
    unsent: list[str] = []
    try:
        for path in shipped_files():
            try:
                meta = read_file_meta_info(path)
                sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
            except Exception:
                outcomes["not a Part 10 file: not sent"] += 1
                continue
            negotiations.offers.clear()
            newest = max((row.id for row in all_instances(catalog)), default=0)
            result = subprocess.run(command(sender, path, listener.port), env=dcmtk_env(),
                                    capture_output=True, text=True, timeout=120)
            log = result.stdout + result.stderr
            # dcmsend exits 0 whatever the peer answered: read the answer from its log
            answer = re.search(r"Received (?:C-STORE|Store) Response \(([^)]*)\)", log)
            if answer is None:
                if not any(line.startswith(("E:", "F:")) for line in log.splitlines()):
                    pytest.fail(f"{path.name}: {sender} ended without a definite outcome:\n{log}")
                outcomes[f"the sender could not send it ({name(syntax)})"] += 1
                unsent.append(path.name)
                continue
            if answer.group(1) != "Success":
                outcomes[f"refused by the listener: {answer.group(1)}"] += 1
                refused.append(path.name)
                continue
            outcomes["stored"] += 1
            stored[check_stored(path, syntax, sop_class, newest, listener, negotiations.offers, tmp_path)] += 1
    finally:
        listener_log.removeHandler(negotiations)
        listener_log.setLevel(previous_level)

    print(f"\n{sender}, default proposals, {len(shipped_files())} shipped files: {dict(outcomes)}")
    for kind, count in sorted(stored.items()):
        print(f"  {count:4d}  {kind}")
    print(f"  refused: {refused}\n  not sent by {sender}: {unsent}")
    assert outcomes["stored"] >= 100
    assert len(all_instances(catalog)) == len({row.object_key for row in all_instances(catalog)})
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(listener.port)],
        env=dcmtk_env(), capture_output=True, timeout=30,
    )
    assert echo.returncode == 0, "the listener stopped serving"


def check_stored(
    path: Path, syntax: str, sop_class: str, newest: int, listener: RunningListener,
    offers: list[Offer], scratch: Path,
) -> str:
    """Assert what a Success stored; returns the kind of outcome, for the summary."""
    catalog, store = listener.runtime.catalog, listener.runtime.store
    sent = dcmread(path)
    uid = str(sent.SOPInstanceUID)  # dcmtk sends the dataset's own UID, whatever the file meta says
    rows = [row for row in catalog.versions(uid) if row.id > newest] or catalog.versions(uid)
    file_dataset = dataset_bytes(path.read_bytes())
    found: tuple[Instance, str] | None = None
    for row in rows:
        blob = dataset_bytes(store.get(row.object_key))
        if blob == file_dataset:
            found = row, "byte-identical to the file"
        elif blob == dcmtk_rewrite(path, row.transfer_syntax_uid, scratch):
            found = row, "byte-identical to dcmtk's own encoding of the file in that syntax (dcmconv -p)"
        else:
            continue
        break
    assert found is not None, f"{path.name}: Success, but no object holds its dataset, nor dcmtk's encoding of it"
    row, how = found
    if row.transfer_syntax_uid == syntax:
        return f"{name(syntax)} kept, {how}"
    mine = [o for o in offers if o.abstract_syntax == sop_class]
    assert not any(o.accepted == syntax for o in mine), (
        f"{path.name}: the listener accepted {name(syntax)} but the sender sent {name(row.transfer_syntax_uid)}")
    why = "the listener's order" if any(preferred_over(o, syntax) for o in mine) else "not offered by the sender"
    return f"{name(syntax)} -> {name(row.transfer_syntax_uid)} ({why}), {how}"
