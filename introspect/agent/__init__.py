"""The agent: code that runs *inside* the target process.

``agent.py`` is shipped to the target as a file and executed there in a fresh namespace; it must
import nothing of ours and nothing beyond builtin stdlib modules. This package only locates it.
"""

from __future__ import annotations

from pathlib import Path

AGENT_PATH = Path(__file__).with_name("agent.py")


def agent_source() -> bytes:
    return AGENT_PATH.read_bytes()
