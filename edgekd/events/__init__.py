"""The event store of `edgekd run --events DB` (store.py), the sink that fills it (sink.py) and what reads it:
`edgekd events` and the dashboard's history page."""
