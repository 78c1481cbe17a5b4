"""Association negotiation: who gets a slot, which SOP classes and transfer syntaxes are accepted.

**Transfer syntaxes.** pynetdicom accepts, for each proposed presentation context, the first
syntax of the *acceptor's* list that the requestor also proposed
(``pynetdicom.presentation.negotiate_as_acceptor``). Senders that hold a compressed file
propose its own syntax together with uncompressed fallbacks in one context (dcmsend:
``[RLE, Explicit LE, Explicit BE, Implicit LE]``), so the order of our list decides whether
the file arrives as the modality made it or decompressed by the sender. The default order
therefore puts every encapsulated syntax first (lossless before lossy: a router that can
compress on the fly should never be invited to compress lossily), then deflated and
explicit little endian, then Implicit VR Little Endian, and the retired Explicit VR Big
Endian last: storescu pairs those two in one context, and implicit files are far more
common than big-endian ones. ``MEDHASH_TRANSFER_SYNTAXES`` replaces the order.

**SOP classes.** The standard's storage SOP classes are always accepted. With
``MEDHASH_ACCEPT_UNKNOWN_SOP_CLASSES`` (on by default, Orthanc's ``UnknownSopClassAccepted``)
any other proposed abstract syntax that is not a known non-storage service is accepted as
storage too: retired classes (US Image Storage 1.2.840.10008.5.1.4.1.1.6), private ones and
classes newer than pynetdicom. pynetdicom routes a C-STORE to its storage service by the
request's SOP class UID and aborts the association for a UID it does not know, so such
classes are registered with it (``pynetdicom.sop_class.register_uid``, the documented way to
add private or retired classes) before the first C-STORE can arrive.

**Slots.** ``MEDHASH_MAX_ASSOCIATIONS`` counts associations that sent an A-ASSOCIATE-RQ,
checked here when the request arrives, instead of pynetdicom's count of every connection:
a TCP probe or port scan that connects and never associates then never takes a slot, and
is dropped after ``MEDHASH_ASSOCIATION_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from typing import ClassVar

from pydicom import uid as uids
from pydicom._uid_dict import UID_dictionary
from pynetdicom import ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass

from shared.config import Settings
from shared.metrics import ASSOCIATIONS_REJECTED

log = logging.getLogger("medhash.listener")

LOSSLESS_ENCAPSULATED: tuple[str, ...] = (
    uids.RLELossless,
    uids.JPEGLSLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000MCLossless,
    uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL,
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression (a lossless re-packing of JPEG)
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
UNCOMPRESSED_LAST: tuple[str, ...] = (
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
)
_C_STORE_RQ = 0x0001
MAX_REGISTERED_CLASSES = 10_000
"""SOP classes registered with pynetdicom on demand (its registry is process-wide and never
shrinks): enough for every private class a hospital's devices use, a bound for a peer that
proposes random UIDs."""


def default_transfer_syntaxes() -> list[str]:
    """Every syntax pynetdicom can carry, in the order described in the module docstring."""
    known = list(ALL_TRANSFER_SYNTAXES)
    lossless = [ts for ts in LOSSLESS_ENCAPSULATED if ts in known]
    other = [ts for ts in known if ts not in lossless and ts not in UNCOMPRESSED_LAST]
    return lossless + other + [ts for ts in UNCOMPRESSED_LAST if ts in known]


def preferred_transfer_syntaxes(settings: Settings) -> list[str]:
    """``MEDHASH_TRANSFER_SYNTAXES`` when set, else :func:`default_transfer_syntaxes`."""
    return list(dict.fromkeys(settings.transfer_syntaxes)) or default_transfer_syntaxes()


def standard_storage_classes() -> list[str]:
    """The current standard's storage SOP classes, as pynetdicom knows them (not those we added)."""
    known = pynetdicom_sop_class._STORAGE_CLASSES.values()
    return [uid for uid in known if uid not in StorageClasses._registered]


class StorageClasses:
    """Decides which abstract syntaxes are storage SOP classes and registers the ones pynetdicom lacks.

    Thread-safe; one instance per process is enough (pynetdicom's registry is global).
    """

    # pynetdicom's registry is process-wide, so is what we added to it
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _registered: ClassVar[set[str]] = set()

    def __init__(self, accept_unknown: bool) -> None:
        self.accept_unknown = accept_unknown
        self._standard = frozenset(standard_storage_classes())

    def admit(self, sop_class_uid: str) -> bool:
        """Whether a proposed abstract syntax is accepted as a storage SOP class.

        Registers it with pynetdicom when needed, so a C-STORE of it reaches our handler.
        """
        if sop_class_uid in self._standard:
            return True
        if not self.accept_unknown or not _storage_like(sop_class_uid):
            return False
        return self.make_routable(sop_class_uid)

    def make_routable(self, sop_class_uid: str) -> bool:
        """Make pynetdicom route a C-STORE of this class to the storage service; False when full.

        Also used for a C-STORE whose SOP class was never negotiated (a sender's mismatch):
        routed, it gets a failure status from our handler instead of an aborted association.
        """
        if issubclass(pynetdicom_sop_class.uid_to_service_class(sop_class_uid), StorageServiceClass):
            return True
        with self._lock:
            if sop_class_uid in self._registered:
                return True
            if len(self._registered) >= MAX_REGISTERED_CLASSES:
                log.warning(
                    "SOP class %s not registered: already %d extra SOP classes this process",
                    sop_class_uid[:80], MAX_REGISTERED_CLASSES, extra={"stage": "listener"},
                )
                return False
            keyword = "MedhashStorage" + "".join(c if c.isalnum() else "_" for c in sop_class_uid)
            pynetdicom_sop_class.register_uid(sop_class_uid, keyword[:200], StorageServiceClass)
            self._registered.add(sop_class_uid)
        return True


def _storage_like(sop_class_uid: str) -> bool:
    """Unknown to pynetdicom and not a known non-storage service (so: retired, private, newer)."""
    if pynetdicom_sop_class.uid_to_service_class(sop_class_uid) is not ServiceClass:
        return issubclass(pynetdicom_sop_class.uid_to_service_class(sop_class_uid), StorageServiceClass)
    known = UID_dictionary.get(sop_class_uid)
    if known is None:
        return True  # private, or newer than pydicom's dictionary
    name, kind = known[0], known[1]
    return kind == "SOP Class" and "Storage" in name and not name.startswith(
        ("Storage Commitment", "Media Storage Directory")
    )


class AssociationSlots:
    """At most ``limit`` associations that have sent an A-ASSOCIATE-RQ and are still running."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: weakref.WeakSet[Association] = weakref.WeakSet()

    def take(self, assoc: Association) -> bool:
        with self._lock:
            busy = sum(1 for holder in self._holders if holder.is_alive())
            if busy >= self.limit:
                return False
            self._holders.add(assoc)
            return True


class Negotiator:
    """The ``EVT_REQUESTED`` handler: slot check, then the contexts this association may get.

    pynetdicom fires ``EVT_REQUESTED`` when the A-ASSOCIATE-RQ has arrived and before it
    negotiates, and lets the handler reject the request or set the acceptor's supported
    contexts for this one association. The contexts are set here rather than by the server
    because pynetdicom deep-copies the server's list for every connection: ~0.2 s of CPU
    for 170 storage classes x 45 syntaxes, spent under the GIL even for a TCP probe that
    never associates (40 probes kept ``echoscu`` waiting for seconds). Negotiation only reads
    the acceptor's contexts, so one shared list serves every association.
    """

    def __init__(self, settings: Settings, storage: StorageClasses, base_contexts: Sequence[PresentationContext]) -> None:
        self.slots = AssociationSlots(settings.max_associations)
        self.storage = storage
        self.transfer_syntaxes = preferred_transfer_syntaxes(settings)
        self._base = list(base_contexts)
        self._supported = {str(cx.abstract_syntax) for cx in self._base}

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        if not self.slots.take(assoc):
            ASSOCIATIONS_REJECTED.labels(reason="busy").inc()
            log.warning(
                "association rejected: all %d association slots are in use (MEDHASH_MAX_ASSOCIATIONS)",
                self.slots.limit,
                extra={"stage": "listener", "calling_ae": _calling_ae(assoc)},
            )
            # rejected-transient, by the presentation service provider, local limit exceeded;
            # then wait until the rejection is on the wire, as pynetdicom's own rejections do
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            assoc.kill()
            return
        proposed = assoc.requestor.primitive.presentation_context_definition_list
        extra = sorted({
            str(cx.abstract_syntax) for cx in proposed
            if str(cx.abstract_syntax) not in self._supported and self.storage.admit(str(cx.abstract_syntax))
        })
        contexts = list(self._base)
        for sop_class in extra:
            context = PresentationContext()
            context.abstract_syntax = sop_class
            context.transfer_syntax = self.transfer_syntaxes
            contexts.append(context)
        assoc.acceptor.supported_contexts = contexts
        if extra:
            log.info(
                "accepting %d SOP class(es) outside the standard's storage list: %s",
                len(extra), ", ".join(extra[:10]),
                extra={"stage": "listener", "calling_ae": _calling_ae(assoc)},
            )

    def on_accepted(self, event: evt.Event) -> None:
        """Log what was negotiated: per association at INFO, per context at DEBUG.

        The DEBUG lines answer an operator's "why did my sender transcode?": each proposed
        context with the syntaxes offered and the one accepted.
        """
        assoc = event.assoc
        proposed = assoc.requestor.primitive.presentation_context_definition_list
        accepted = {cx.context_id: cx for cx in assoc.accepted_contexts}
        extra = {"stage": "listener", "calling_ae": _calling_ae(assoc)}
        log.info("association accepted: %d of %d proposed presentation contexts", len(accepted),
                 len(proposed), extra=extra)
        if not log.isEnabledFor(logging.DEBUG):
            return
        for cx in proposed:
            offered = [str(ts) for ts in cx.transfer_syntax]
            chosen = accepted.get(cx.context_id)
            syntax = str(chosen.transfer_syntax[0]) if chosen is not None else None
            log.debug(
                "context %d %s: offered %s, accepted %s", cx.context_id, cx.abstract_syntax,
                ", ".join(offered), syntax or "none",
                extra={**extra, "abstract_syntax": str(cx.abstract_syntax), "offered": offered,
                       "accepted": syntax},
            )

    def on_connection_closed(self, event: evt.Event) -> None:
        """End at once an acceptor whose peer closed before sending an A-ASSOCIATE-RQ.

        pynetdicom stops the connection's DUL (state Sta2 + transport closed, AA-5) but its
        association thread keeps waiting for the request until the ARTIM timeout; a burst of
        TCP probes would then fill the connection bound for that long. The wait is on the
        DUL's ``to_user_queue``, where "nothing arrived" is ``None``: put that there now.
        """
        assoc = event.assoc
        if (assoc.is_acceptor and assoc.requestor.primitive is None
                and assoc.dul.state_machine.current_state == "Sta2"):
            assoc.dul.to_user_queue.put(None)

    def on_dimse_received(self, event: evt.Event) -> None:
        """Route a C-STORE of a never-negotiated SOP class to the storage service (see make_routable)."""
        command = event.message.command_set
        if command.get("CommandField") == _C_STORE_RQ and command.get("AffectedSOPClassUID"):
            self.storage.make_routable(str(command.AffectedSOPClassUID))


def _calling_ae(assoc: Association) -> str | None:
    title = assoc.requestor.ae_title or getattr(assoc.requestor.primitive, "calling_ae_title", None)
    return str(title).strip() if title else None
