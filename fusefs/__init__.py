"""missionfs: a scraping mission mounted as a filesystem (pending = intent - fact)."""

__version__ = "0.1.0"
