"""Reference scraper workers for missionfs (see issue 5; placeholder for now)."""
