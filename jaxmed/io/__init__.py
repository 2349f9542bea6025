"""jaxmed.io."""
