"""What the API's lifespan opens once and every request shares (the composition root's output)."""

from dataclasses import dataclass

from reporting.auth.tokens import TokenVerifier
from reporting.db.engine import Database
from reporting.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    db: Database
    tokens: TokenVerifier
