"""What the API's lifespan opens once and every request shares (the composition root's output)."""

from dataclasses import dataclass, field

from reporting.auth.tokens import TokenVerifier
from reporting.db.engine import Database
from reporting.settings import Settings
from reporting.stats.cache import ResponseCache
from reporting.stats.events import StatsEventHub
from reporting.storage.base import ObjectStore


@dataclass
class AppContext:
    settings: Settings
    db: Database
    tokens: TokenVerifier
    store: ObjectStore
    stats_cache: ResponseCache = field(default_factory=ResponseCache)
    stats_events: StatsEventHub = field(default_factory=StatsEventHub)
