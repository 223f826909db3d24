"""Commands whose engines are still being built; each says so, and where to follow it."""

from __future__ import annotations

from pudrt.errors import PudrtError


def _pending(what: str) -> None:
    raise PudrtError(f"`pudrt {what}` is not ready yet in this release; see the README's roadmap.")


def scan() -> None:
    """Score every sample of an untrusted dataset for poisoning. Not ready yet."""
    _pending("scan")
