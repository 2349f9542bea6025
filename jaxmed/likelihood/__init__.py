"""jaxmed.likelihood."""
