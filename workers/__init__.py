"""The Celery app and the pipeline's tasks (preprocess, encode, index)."""
