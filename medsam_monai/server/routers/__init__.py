"""One router per resource: ``health``, ``sessions`` (with their segmentations and jobs) and
``everything`` (a session's automatic-mask jobs)."""
