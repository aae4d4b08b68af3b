"""A process's memory map (``/proc/PID/maps``) as records.

The bottom layer under both ``target.py`` (which reads the Python version and the C API's object
from the map) and ``inject/symbols.py`` (which turns an ELF file's symbols into addresses in the
map): it imports nothing of ours, so neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def parse_maps(text: str) -> list[Mapping]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].strip() if len(parts) == 6 else ""
        out.append(Mapping(start, end, parts[1], int(parts[2], 16), path))
    return out
