"""harchos: carbon-aware AI workloads."""

__version__ = "0.1.0"
