"""The DICOM listener: a C-ECHO / C-STORE SCP that PACS and modalities forward studies to.

Thin glue between pynetdicom and :class:`shared.pipeline.ingest.Ingestor`. It accepts every storage
SOP class of the standard with every transfer syntax that can be stored as received, and
stores the encoded dataset exactly as it arrived (no decoding, no re-encoding) behind a
file meta derived from the request and the presentation context.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from shared.config import Settings
from shared.dicom.part10 import file_meta
from shared.metrics import ASSOCIATIONS, ASSOCIATIONS_REJECTED
from shared.pipeline.ingest import Ingestor

log = logging.getLogger("medhash.listener")

# Everything pynetdicom can carry: the uncompressed syntaxes, deflate, big endian and every
# encapsulated one (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG,
# HEVC, ...). Encapsulated data is stored as received, so no codec is needed here.
STORABLE_TRANSFER_SYNTAXES: list[str] = list(ALL_TRANSFER_SYNTAXES)


class _SharedPortServer(ThreadedAssociationServer):
    """An association server whose port several listener processes can bind (SO_REUSEPORT).

    The kernel spreads incoming associations over the processes, which is how the listener
    scales past the one core a Python process gets (``MEDHASH_LISTENER_PROCESSES``).
    """

    request_queue_size = 128  # socketserver's default backlog of 5 drops bursts of senders

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


@dataclass(frozen=True)
class ListenerAddress:
    host: str
    port: int


def build_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from the settings; requires client certificates when a CA is set."""
    if settings.tls_cert is None:
        return None
    if settings.tls_key is None:
        raise ValueError("MEDHASH_TLS_CERT is set but MEDHASH_TLS_KEY is not: set both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=settings.tls_cert, keyfile=settings.tls_key)
    if settings.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=settings.tls_ca)
    return context


class Listener:
    """A running C-STORE SCP; :meth:`start` returns at once, :meth:`stop` shuts it down."""

    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None

    def _build_ae(self) -> AE:
        settings = self.settings
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.acse_timeout = 30
        if settings.allowed_calling_aes:
            ae.require_calling_aet = list(settings.allowed_calling_aes)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORABLE_TRANSFER_SYNTAXES)
        return ae

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        requestor = event.assoc.requestor
        calling_ae = requestor.ae_title.strip() if requestor.ae_title else None
        sop_class_uid = str(request.AffectedSOPClassUID or "")
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        transfer_syntax_uid = str(event.context.transfer_syntax)
        # the dataset exactly as it arrived, behind a file meta derived from the request
        part10 = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid)
        outcome = self.ingestor.store_instance(
            part10 + event.request.DataSet.getvalue(),
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
        )
        return int(outcome.status)

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_open(self, event: evt.Event) -> None:
        ASSOCIATIONS.inc()

    def _on_close(self, event: evt.Event) -> None:
        ASSOCIATIONS.dec()

    def _on_rejected(self, event: evt.Event) -> None:
        ASSOCIATIONS_REJECTED.labels(reason="rejected").inc()
        log.warning(
            "association rejected",
            extra={"stage": "listener", "calling_ae": event.assoc.requestor.ae_title},
        )

    def start(self) -> ListenerAddress:
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.make_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            evt_handlers=handlers,
            ssl_context=build_tls_context(self.settings),
            server_class=_SharedPortServer,
        )
        # what AE.start_server does, with our server class: the AE tracks its servers and
        # the server's shutdown() removes itself from that list
        self.ae._servers.append(self._server)  # noqa: SLF001
        threading.Thread(
            target=self._server.serve_forever, name="medhash-listener", daemon=True
        ).start()
        host, port = self._server.server_address[:2]
        log.info(
            "listening as %s on %s:%d (%d storage SOP classes, %d transfer syntaxes%s)",
            self.settings.ae_title,
            host,
            port,
            len(AllStoragePresentationContexts),
            len(STORABLE_TRANSFER_SYNTAXES),
            ", TLS" if self.settings.tls_cert else "",
        )
        return ListenerAddress(str(host), int(port))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
