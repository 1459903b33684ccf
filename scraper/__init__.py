"""The reference scraper: workers that need nothing but a missionfs mount.

`python -m scraper MNT` (or `missionfs-scrape MNT`) runs N workers that claim tasks with a
rename, fetch rows from a source (OpenStreetMap's Overpass API, or synthetic rows), and commit
each result with write + fsync + rename into `done/`. See README.md, "The reference scraper".
"""

__version__ = "0.1.0"
