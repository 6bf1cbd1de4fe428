"""What a principal may see: the scope that travels with every tenant query.

The same scope is enforced twice: by `Scope.require_*` in the service layer (403 for anything
outside, existing or not) and inside PostgreSQL by row-level security policies driven by the
transaction-local settings `app.role`, `app.group_ids` and `app.sub` (see db/engine.py).
"""

from dataclasses import dataclass, field
from typing import Literal

from reporting.errors import Forbidden

Role = Literal["admin", "teacher", "service", "system"]


@dataclass(frozen=True, slots=True)
class Scope:
    role: Role
    sub: str
    group_ids: frozenset[str] = field(default_factory=frozenset)
    email: str | None = None
    locale: str | None = None
    # When the token stops being valid (its `exp`, epoch seconds); what lasts longer than a
    # request (an event stream) ends then.
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "system")

    @property
    def is_system(self) -> bool:
        """The workers' scope: no SET ROLE, no row-level security."""
        return self.role == "system"

    @property
    def can_read_stats(self) -> bool:
        return self.role in ("admin", "teacher", "system")

    def can_read_group(self, group_id: str) -> bool:
        return self.is_admin or (self.role == "teacher" and group_id in self.group_ids)

    def require_stats_reader(self) -> None:
        if not self.can_read_stats:
            raise Forbidden("This token's role may not read statistics.")

    def require_group(self, group_id: str) -> None:
        """403 unless the group is readable; says nothing about whether it exists."""
        if not self.can_read_group(group_id):
            raise Forbidden("This group is outside your scope.")

    def require_ingest(self) -> None:
        if self.role not in ("admin", "service", "system"):
            raise Forbidden("Only service or admin tokens may ingest data.")


SYSTEM = Scope(role="system", sub="system")
