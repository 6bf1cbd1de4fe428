"""The NOTIFY channels between the service's processes, named once.

- `stats_changed`: sent by every tick and by directory upserts (payload: stats/cache.py's
  change_payload); heard by the API, which drops cached answers and tells open event streams.
- `attempts_ingested`: sent by ingestion, API and CLI (`{"group_ids": [...]}`); heard by the
  analytics worker when live updates are on.
- `directory_changed`: sent by the directory's triggers (migration 0007; no payload); heard by
  the analytics worker when live updates are on (the next tick is a full one).
- `exports_pending`: sent with an accepted export request (the export's id); heard by the export
  worker.

A notification is delivered at the sender's commit to the sessions listening then: each listener
also looks for what it may have missed whenever it (re)connects.

The analytics worker's live listener names its session LIVE_LISTENER_APPLICATION_NAME: the API
looks for it in pg_stat_activity to tell whether anyone follows ingestion (stats/events.py).
"""

STATS_CHANGED = "stats_changed"
ATTEMPTS_INGESTED = "attempts_ingested"
DIRECTORY_CHANGED = "directory_changed"  # also written in migration 0007's trigger functions
EXPORTS_PENDING = "exports_pending"

LIVE_LISTENER_APPLICATION_NAME = "reporting-worker-listener"
