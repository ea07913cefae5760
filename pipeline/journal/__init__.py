"""The durable journal: an SQLite file of unfinished spores and dead letters."""
