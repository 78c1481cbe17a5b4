"""The Celery application of the workers: ``celery -A workers.app worker -Q preprocess`` starts a
CPU worker (``medhash worker`` does the same).

Its configuration, reliability settings included, is :func:`shared.pipeline.queues.create_celery_app`,
the same that every publishing process (listener, reconciler) uses; this module only adds the
task module the worker imports.
"""

from __future__ import annotations

from shared.config import get_settings
from shared.pipeline.queues import create_celery_app

app = create_celery_app(get_settings(), include=["workers.tasks"])
