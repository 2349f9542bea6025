"""jaxmed: JAX library for medical-image anomaly detection and classification research."""

__version__ = "0.1.0"
