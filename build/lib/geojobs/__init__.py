"""geojobs: geospatial analysis jobs queued in PostGIS and run by long-lived workers."""

__version__ = "0.1.0"
