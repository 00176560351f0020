"""`lbdl dqn`: deep Q-learning on Atari and classic control (book 6.7).

`from lbdl_apps.dqn import load; agent = load("model.safetensors"); agent.evaluate(10)`
"""

from __future__ import annotations

from lbdl_apps.core.lazy import lazy_api

__all__ = ["Agent", "load"]
__getattr__ = lazy_api(__name__, __all__)
