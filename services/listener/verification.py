"""The Verification SCP (C-ECHO, PS3.4 annex A): how a PACS's "echo" button tests the route."""

from __future__ import annotations

from pynetdicom import evt

SUCCESS = 0x0000


def on_echo(event: evt.Event) -> int:
    """Success: the association was accepted, so the listener and the network path work."""
    return SUCCESS
