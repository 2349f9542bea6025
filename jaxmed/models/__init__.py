"""jaxmed.models."""
