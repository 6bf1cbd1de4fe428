"""Content negotiation shared by the routes that serve cacheable bodies (stats, dashboard)."""


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether Accept-Encoding admits gzip (by name or `*`) with a non-zero q."""
    for coding in (accept_encoding or "").split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip()
        if not quality.startswith("q="):
            return True
        try:
            return float(quality[2:]) > 0
        except ValueError:
            return False
    return False


def etag_matches(if_none_match: str | None, *etags: str | None) -> bool:
    """Whether If-None-Match names one of `etags` (weakly: `W/` is ignored) or is `*`."""
    if not if_none_match:
        return False
    ours = {tag for tag in etags if tag} | {"*"}
    return any(tag.strip().removeprefix("W/") in ours for tag in if_none_match.split(","))
