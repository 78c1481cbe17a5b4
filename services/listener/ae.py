"""The listener's application entity: pynetdicom's AE with medhash's services plugged in.

One module per DIMSE service (``verification``, ``storage``, ``commitment``), negotiation
(slots, SOP classes, transfer syntaxes) in ``negotiation`` and the TCP guards in ``server``;
this module only assembles them. What the listener accepts and answers, for a hospital's
integration team, is ``docs/conformance.md``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

from services.listener.commitment import CommitmentSCP
from services.listener.negotiation import (
    Negotiator,
    StorageClasses,
    preferred_transfer_syntaxes,
    standard_storage_classes,
)
from services.listener.server import PENDING_CONNECTIONS, AssociationServer
from services.listener.storage import StorageSCP
from services.listener.verification import on_echo
from shared.config import Settings
from shared.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from shared.metrics import ASSOCIATIONS, ASSOCIATIONS_REJECTED
from shared.pipeline.ingest import Ingestor

log = logging.getLogger("medhash.listener")

# Verification and Storage Commitment carry small datasets that pynetdicom encodes itself
COMMITMENT_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


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
    """A running Verification, Storage and Storage Commitment SCP; :meth:`start` returns at once."""

    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.transfer_syntaxes = preferred_transfer_syntaxes(settings)
        self.ae = self._build_ae()
        self.storage = StorageSCP(ingestor)
        self.commitment = CommitmentSCP(settings, ingestor)
        self.negotiator = Negotiator(
            settings, StorageClasses(settings.accept_unknown_sop_classes), self.ae.supported_contexts
        )
        self._server: AssociationServer | None = None

    def _build_ae(self) -> AE:
        settings = self.settings
        ae = AE(ae_title=settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        # the association limit is MEDHASH_MAX_ASSOCIATIONS, checked on A-ASSOCIATE-RQ by the
        # Negotiator; pynetdicom's own count includes connections that never associate
        ae.maximum_associations = settings.max_associations + PENDING_CONNECTIONS
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.acse_timeout = settings.association_request_timeout
        if settings.allowed_calling_aes:
            ae.require_calling_aet = list(settings.allowed_calling_aes)
        ae.add_supported_context(Verification, COMMITMENT_TRANSFER_SYNTAXES)
        ae.add_supported_context(StorageCommitmentPushModel, COMMITMENT_TRANSFER_SYNTAXES)
        for sop_class in standard_storage_classes():
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        return ae

    def _on_open(self, event: evt.Event) -> None:
        ASSOCIATIONS.inc()

    def _on_close(self, event: evt.Event) -> None:
        ASSOCIATIONS.dec()

    def _on_rejected(self, event: evt.Event) -> None:
        ASSOCIATIONS_REJECTED.labels(reason="rejected").inc()
        log.warning(
            "association rejected (calling AE title not in MEDHASH_ALLOWED_CALLING_AES, or "
            "called AE title wrong)",
            extra={"stage": "listener", "calling_ae": event.assoc.requestor.ae_title},
        )

    def start(self) -> ListenerAddress:
        handlers = [
            (evt.EVT_REQUESTED, self.negotiator.on_requested),
            (evt.EVT_ACCEPTED, self.negotiator.on_accepted),
            (evt.EVT_DIMSE_RECV, self.negotiator.on_dimse_received),
            (evt.EVT_C_STORE, self.storage.on_store),
            (evt.EVT_C_ECHO, on_echo),
            (evt.EVT_N_ACTION, self.commitment.on_action),
            (evt.EVT_DIMSE_SENT, self.commitment.on_dimse_sent),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_CONN_CLOSE, self.negotiator.on_connection_closed),
            (evt.EVT_CONN_CLOSE, self.storage.on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.make_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            # every association gets the full list from the Negotiator (see there why)
            contexts=[cx for cx in self.ae.supported_contexts if cx.abstract_syntax == Verification],
            evt_handlers=handlers,
            ssl_context=build_tls_context(self.settings),
            server_class=AssociationServer,
            request_timeout=self.settings.association_request_timeout,
            network_timeout=self.settings.network_timeout,
            connection_limit=self.settings.max_associations + PENDING_CONNECTIONS,
        )
        # what AE.start_server does, with our server class: the AE tracks its servers and
        # the server's shutdown() removes itself from that list
        self.ae._servers.append(self._server)
        self.commitment.start()
        threading.Thread(
            target=self._server.serve_forever, name="medhash-listener", daemon=True
        ).start()
        host, port = self._server.server_address[:2]
        log.info(
            "listening as %s on %s:%d (%d standard storage SOP classes%s, %d transfer syntaxes%s)",
            self.settings.ae_title,
            host,
            port,
            len(standard_storage_classes()),
            " + retired/private/unknown" if self.settings.accept_unknown_sop_classes else "",
            len(self.transfer_syntaxes),
            ", TLS" if self.settings.tls_cert else "",
        )
        return ListenerAddress(str(host), int(port))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.commitment.stop()
