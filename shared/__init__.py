"""What services and workers share: settings, object store, catalog, DICOM, models, index."""
