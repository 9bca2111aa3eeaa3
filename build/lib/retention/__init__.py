"""retention: enforce data-retention terms in SQL databases and prove it afterwards."""

__version__ = "0.1.0"
