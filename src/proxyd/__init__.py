"""proxyd: a credential delegation service for grid workload management."""

__version__ = "0.1.0"
