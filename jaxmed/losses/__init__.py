"""jaxmed.losses."""
