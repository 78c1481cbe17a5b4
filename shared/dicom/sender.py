"""A storage SCU that sends DICOM files exactly as they are on disk (``medhash send``).

Each file is offered in its own transfer syntax and streamed from disk without decoding
(pynetdicom's chunked send), so what arrives is byte-for-byte the dataset the file holds.
Files are grouped so an association never proposes more than the 128 presentation contexts
the standard allows; an association that breaks is re-opened for the files not yet sent.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association

log = logging.getLogger("medhash.send")

# Stream each file's own bytes, never decode and re-encode them. pynetdicom keeps this as a
# process-wide switch; it is set once here, not toggled per send, so concurrent senders in
# one process cannot switch it off under each other.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS_PER_ASSOCIATION = 128
SUCCESS = 0x0000


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None
    """The peer's C-STORE status; ``None`` when the file was never answered."""
    reason: str

    @property
    def stored(self) -> bool:
        """Success, or a warning (0xB000 family: stored with coercion or discarded elements)."""
        return self.status is not None and (self.status == SUCCESS or 0xB000 <= self.status <= 0xBFFF)


@dataclass(frozen=True)
class _Outgoing:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str

    @property
    def context(self) -> tuple[str, str]:
        return (self.sop_class_uid, self.transfer_syntax_uid)


def collect_files(path: Path) -> list[Path]:
    """``path`` itself, or every regular file below it, sorted for a repeatable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a file nor a folder: nothing to send")
    return sorted(p for p in path.rglob("*") if p.is_file())


def _inspect(path: Path) -> _Outgoing | SendResult:
    try:
        meta = read_file_meta_info(path)
        return _Outgoing(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.TransferSyntaxUID),
        )
    except Exception as exc:  # not Part 10, truncated, or missing the meta elements
        return SendResult(path, None, f"not a DICOM Part 10 file: {type(exc).__name__}: {exc}")


def _batches(files: Sequence[_Outgoing]) -> list[list[_Outgoing]]:
    """Split files into runs whose distinct presentation contexts fit one association."""
    batches: list[list[_Outgoing]] = []
    contexts: set[tuple[str, str]] = set()
    for item in files:
        if not batches or (
            item.context not in contexts and len(contexts) >= MAX_CONTEXTS_PER_ASSOCIATION
        ):
            batches.append([])
            contexts = set()
        batches[-1].append(item)
        contexts.add(item.context)
    return batches


class Sender:
    """Sends files to one storage SCP."""

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str = "MEDHASH_SCU",
        *,
        tls: ssl.SSLContext | None = None,
        max_pdu_size: int = 262_144,
        timeout_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.called_ae = called_ae
        self.calling_ae = calling_ae
        self.tls = tls
        self.max_pdu_size = max_pdu_size
        self.timeout_s = timeout_s

    def _associate(self, batch: Sequence[_Outgoing]) -> Association:
        ae = AE(ae_title=self.calling_ae)
        ae.maximum_pdu_size = self.max_pdu_size
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        by_class: dict[str, list[str]] = {}
        for item in batch:
            syntaxes = by_class.setdefault(item.sop_class_uid, [])
            if item.transfer_syntax_uid not in syntaxes:
                syntaxes.append(item.transfer_syntax_uid)
        for sop_class, syntaxes in by_class.items():
            # One context per (class, syntax): a peer may accept some syntaxes and not others.
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, syntax)
        tls_args = (self.tls, self.host) if self.tls else None
        return ae.associate(self.host, self.port, ae_title=self.called_ae, tls_args=tls_args)

    def send(
        self,
        paths: Iterable[Path],
        on_result: Callable[[SendResult], None] | None = None,
    ) -> list[SendResult]:
        """Send every file; one result per path, in order of completion."""
        results: list[SendResult] = []

        def done(result: SendResult) -> None:
            results.append(result)
            if on_result is not None:
                on_result(result)

        outgoing: list[_Outgoing] = []
        for path in paths:
            inspected = _inspect(path)
            if isinstance(inspected, SendResult):
                done(inspected)
            else:
                outgoing.append(inspected)
        for batch in _batches(outgoing):
            self._send_batch(batch, done)
        return results

    def _send_batch(self, batch: list[_Outgoing], done: Callable[[SendResult], None]) -> None:
        remaining = list(batch)
        reopened = False
        while remaining:
            assoc = self._associate(remaining)
            if not assoc.is_established:
                reason = "association rejected" if assoc.is_rejected else "association failed"
                for item in remaining:
                    done(SendResult(item.path, None, f"{reason} by {self.host}:{self.port}"))
                return
            try:
                remaining = self._send_on(assoc, remaining, done)
            finally:
                if assoc.is_established:
                    assoc.release()
            if remaining and reopened:
                for item in remaining:
                    done(SendResult(item.path, None, "association aborted twice"))
                return
            reopened = True

    def _send_on(
        self, assoc: Association, items: list[_Outgoing], done: Callable[[SendResult], None]
    ) -> list[_Outgoing]:
        """Send until the association breaks; returns the items that were not answered."""
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for index, item in enumerate(items):
            if not assoc.is_established:
                return items[index:]
            if item.context not in accepted:
                done(SendResult(item.path, None, f"peer did not accept {item.transfer_syntax_uid} "
                                                 f"for SOP class {item.sop_class_uid}"))
                continue
            try:
                response = assoc.send_c_store(os.fspath(item.path))
            except Exception as exc:  # unreadable file between inspection and send
                done(SendResult(item.path, None, f"cannot send: {type(exc).__name__}: {exc}"))
                continue
            status = response.get("Status") if response else None
            if status is None:
                if not assoc.is_established:
                    return items[index:]
                done(SendResult(item.path, None, "no valid response from the peer"))
                continue
            comment = response.get("ErrorComment", "")
            done(SendResult(item.path, int(status), f"0x{int(status):04X} {comment}".strip()))
        return []
