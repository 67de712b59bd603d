"""The package version (its own module, so that modules under :mod:`lsr` can read it without importing ``lsr``)."""

__version__ = "0.1.0"
