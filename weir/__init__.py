"""Plumbing shared by every Weir service: settings base, logging, health and metrics.

This package imports no layer (ingest, streams, sinks, query, ops), so every layer can use it.
"""

__version__ = "0.1.0"
