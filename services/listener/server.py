"""The TCP side of the listener: accepting connections without letting any of them block others.

pynetdicom's server accepts on one thread and hands each connection to a thread of its own.
Three things it leaves to the application are done here:

* **TLS handshakes off the accept loop.** pynetdicom wraps the accepted socket with a
  blocking handshake in the accept loop itself, so one client that opens a TCP connection to
  a TLS listener and sends nothing stops every other sender. Here the handshake runs on the
  connection's own thread, bounded by ``MEDHASH_ASSOCIATION_REQUEST_TIMEOUT``.
* **A read timeout on every connection** (``MEDHASH_NETWORK_TIMEOUT``): accepted sockets are
  blocking, and a peer that stops in the middle of a PDU would otherwise hold its thread
  (and pynetdicom's association count) forever.
* **A bound on connections that have not associated yet** (:data:`PENDING_CONNECTIONS` above
  the association limit): they are cheap, but a flood of them must not grow threads without
  end. Beyond it new connections are closed at once; the association limit itself is
  enforced on A-ASSOCIATE-RQ by :class:`services.listener.negotiation.Negotiator`.

Several listener processes can bind the same port (SO_REUSEPORT), which is how the listener
scales past the one core a Python process gets (``MEDHASH_LISTENER_PROCESSES``).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from shared.metrics import ASSOCIATIONS_REJECTED

log = logging.getLogger("medhash.listener")

PENDING_CONNECTIONS = 64
"""Connections allowed beyond ``MEDHASH_MAX_ASSOCIATIONS``: senders between TCP connect and
A-ASSOCIATE-RQ (each lasts at most ``MEDHASH_ASSOCIATION_REQUEST_TIMEOUT``)."""


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the three guards of the module docstring."""

    request_queue_size = 128  # socketserver's default backlog of 5 drops bursts of senders

    def __init__(
        self, *args: Any, request_timeout: float, network_timeout: float | None,
        connection_limit: int, **kwargs: Any,
    ) -> None:
        self.request_timeout = request_timeout
        self.network_timeout = network_timeout
        self.connection_limit = connection_limit
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.network_timeout)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if len(self.active_associations) < self.connection_limit:
            return True
        ASSOCIATIONS_REJECTED.labels(reason="too_many_connections").inc()
        log.warning(
            "connection from %s closed: %d connections open (associations + pending)",
            client_address[0], self.connection_limit, extra={"stage": "listener"},
        )
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.request_timeout)
                request.do_handshake()
                request.settimeout(self.network_timeout)
            except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
                ASSOCIATIONS_REJECTED.labels(reason="tls").inc()
                log.warning(
                    "TLS handshake with %s failed: %s", client_address[0], exc,
                    extra={"stage": "listener"},
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
