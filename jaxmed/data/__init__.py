"""jaxmed.data."""
