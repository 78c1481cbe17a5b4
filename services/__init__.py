"""Long-running network services: the DICOM listener, the search service, the indexer."""
