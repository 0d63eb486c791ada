"""The tree controller the integration tests drive: it lives in the product (``services.tree``)."""
from __future__ import annotations

from services.tree import EngineTree, TreeError, free_port, wait_until

__all__ = ["EngineTree", "TreeError", "free_port", "wait_until"]
