"""The executor: the bounded tool-use loop, split by step (prepare, call, act, resolve)."""

from agents.executor.loop import Hooks, OnProgress, execute

__all__ = ["Hooks", "OnProgress", "execute"]
