"""The DICOM listener: Verification, Storage and Storage Commitment SCP (see ``ae``)."""

from services.listener.ae import Listener, ListenerAddress, build_tls_context

__all__ = ["Listener", "ListenerAddress", "build_tls_context"]
