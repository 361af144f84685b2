"""One router per resource: ``health`` and ``sessions`` (with their segmentations and jobs)."""
