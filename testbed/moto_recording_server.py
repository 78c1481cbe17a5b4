"""``moto_server`` whose request recorder survives concurrent requests; what S3Server runs.

moto 5's recorder appends every request to its file from whichever server thread handles
it, with unsynchronised writes (the JSON entry, then a newline, each possibly split by
buffering). Concurrent uploads interleave there: 41 of 200 lines were unreadable after 200
PUTs of 200 kB from 16 threads, and the replay that a restarted S3Server depends on to keep
its objects then fails with HTTP 500. Holding one lock around each recording makes the
file a clean sequence of entries, in the order the requests arrived.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

from moto.moto_api._internal.recorder.models import Recorder
from moto.server import main

_record_request = Recorder._record_request
_lock = threading.Lock()


def _record_request_serialised(self: Recorder, request: Any, body: bytes | None = None) -> None:
    with _lock:
        _record_request(self, request, body)


if __name__ == "__main__":
    Recorder._record_request = _record_request_serialised  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
