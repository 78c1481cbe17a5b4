"""Building the shared components a process needs from the settings, in one place.

The embedded default and the distributed configuration differ only here: which object
store, which catalog database, and whether queues are Celery's or in-process threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Settings
from shared.pipeline.queues import CeleryDispatcher, Dispatcher, InProcessDispatcher
from shared.storage.catalog import Catalog, open_catalog
from shared.storage.objectstore import ObjectStore, open_object_store


@dataclass
class Runtime:
    settings: Settings
    store: ObjectStore
    catalog: Catalog
    dispatcher: Dispatcher

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        dispatcher: Dispatcher
        if settings.broker_url:
            from workers.app import create_celery_app

            dispatcher = CeleryDispatcher(create_celery_app(settings).send_task)
        else:
            dispatcher = InProcessDispatcher()
        return cls(
            settings=settings,
            store=open_object_store(settings),
            catalog=open_catalog(settings),
            dispatcher=dispatcher,
        )

    def close(self) -> None:
        self.dispatcher.close()
        self.catalog.close()
