"""Is an external HTTP service up? Checked before a run starts, so a server that is down or
silent costs seconds, not minutes of client retries after Ray has started."""
from __future__ import annotations

#: Seconds a service has to answer its health check.
REACH_TIMEOUT_S = 5.0


def unreachable(url: str, path: str = "/health", timeout_s: float = REACH_TIMEOUT_S
                ) -> str | None:
    """None if ``url`` + ``path`` answers HTTP 200 within ``timeout_s`` seconds, else why not
    (refused, unresolvable, timed out, another status)."""
    from urllib.error import URLError
    from urllib.request import urlopen
    try:
        with urlopen(url.rstrip("/") + path, timeout=timeout_s) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except (URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason}"
