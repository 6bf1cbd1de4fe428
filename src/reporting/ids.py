"""The ids of the directory's entities, as ingested and as routes take them from the URL path.

An id is text the platform chooses: non-blank, bounded, free of NUL (PostgreSQL text cannot hold
one; we would rather name the field than fail in the database). A group, user, level or topic id
is also one URL path segment (`/stats/groups/{id}`): a `/` in it would make the entity
unreachable, so it is refused when ingested.
"""

from typing import Annotated

from pydantic import AfterValidator, StringConstraints
from pydantic_core import PydanticCustomError


def printable(value: str) -> str:
    """Non-blank and free of NUL (for any text the platform sends)."""
    if not value.strip():
        raise PydanticCustomError("blank_string", "must not be blank")
    return _no_nul(value)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain a NUL character")
    return value


def _one_segment(value: str) -> str:
    if "/" in value:
        raise PydanticCustomError(
            "slash_in_id", "must not contain '/' (the id is one segment of the API's URLs)"
        )
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(printable)]
"""Any ingested id (events and tasks too)."""

EntityId = Annotated[Id, AfterValidator(_one_segment)]
"""The id of a group, user, level or topic."""

PathId = Annotated[str, AfterValidator(_no_nul)]
"""An entity id taken from a URL path: one with NUL cannot exist, so it is a bad request (422)
rather than a question for the database."""
