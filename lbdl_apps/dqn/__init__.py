"""`lbdl dqn`: deep Q-learning on Atari and classic control (book 6.7).

`from lbdl_apps.dqn import load; agent = load("model.safetensors"); agent.evaluate(10)`
"""

from __future__ import annotations

from typing import Any

__all__ = ["Agent", "load"]


def __getattr__(name: str) -> Any:
    """Import the API (and torch, gymnasium) only when it is used, so `lbdl --help` starts fast."""
    if name in __all__:
        from lbdl_apps.dqn import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
