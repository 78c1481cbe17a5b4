"""Logging an operator can grep: ``key=value`` text or one JSON object per line.

Records carry the SOP Instance UID and the stage when a caller passes them in ``extra``
(``log.info("stored", extra={"sop_instance_uid": uid, "stage": "listener"})``), so
``grep sop_instance_uid=1.2.3`` follows one image through every service.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from shared.config import Settings

CONTEXT_FIELDS = ("stage", "sop_instance_uid", "instance_id", "calling_ae", "status")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        context = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {record.getMessage()}"
        if context:
            line += f" | {context}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                payload[name] = getattr(record, name)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.log_json else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # pynetdicom logs every PDU at INFO; keep its associations at WARNING unless debugging.
    if settings.log_level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
