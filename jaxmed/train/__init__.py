"""jaxmed.train."""
