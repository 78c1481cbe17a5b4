"""DICOM helpers: UID validation, header summaries, the pixel pipeline."""
