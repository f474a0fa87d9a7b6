"""The visual-search world: catalog, users, query photos, biased logs, unbiased eval sets."""

from visctr.world.store import World

__all__ = ["World"]
