"""The dump file's format: its constants, its error, and the checks of its JSON fields.

A dump is ``DUMP_MAGIC`` then one zlib stream holding a record stream exactly as records.py reads
it (MAGIC, M, T, R, O..., C..., E: introspect writes format 2, positions, its walker's format 3
addresses resolved first; a reader takes format 3 too, as a version-2 file may hold it; version 1
dumps hold format 2 only), followed by the dump's own frames, in
the same framing (kind, uint32 LE length, payload; kinds listed in records.JSON_MAX):
  ``D`` the process facts (DUMP_FACTS: pid, name, start time, Python, command line, RSS/USS, and
        ``memory``: the memory breakdown read while the dump was taken, MEMORY_FIELDS below; a
        dump written before it existed, or by --keep, has none: ``memory_missing`` says why)
  ``Y`` answers, JSON ``{"what": WHAT, "start": K, "items": [...]}`` with WHAT one of
        ``labels`` (one string per reference, in the order of ``refs``: chunks contiguous from 0),
        ``names`` ([position, name]: modules, classes, functions), ``counts`` ([position, items]:
        builtin containers), ``freevars`` ([position, [names]]: functions)
  ``Z`` the end: JSON {"labels": total} -- a file without it is truncated and refused.
Object values are never written; with ``--no-keys`` a dict key's label is its type (``[str]``).
Reading is as strict as records.py: the decompressed stream is bounded (``MAX_RATIO`` times the
file's size, and ``MAX_BYTES``), every rule is checked, and a broken file is a DumpError (exit 14)
naming the file and the rule, never a traceback and never a partial heap. The writer is
dumpwrite.py, the reader dumpfile.py.
"""

from __future__ import annotations

from typing import Any

from introspect import breakdown
from introspect.snapshot.records import MAX_NAME, FormatError

DUMP_MAGIC_PREFIX = b"INTROSPECT-DUMP "
# 2: the records may be of format 3 (addresses; issue 23), which a reader of version 1 would
# refuse as broken records; version 1 files (format 2 records) are still read.
DUMP_VERSION = 2
READ_VERSIONS = (1, 2)
DUMP_MAGIC = DUMP_MAGIC_PREFIX + b"%d\n" % DUMP_VERSION
SUFFIX = ".pydump"
MAX_RATIO = 200  # decompressed bytes per file byte, at most (a zip bomb is refused)
MAX_BYTES = 64 << 30
CHUNK = 2000  # references per label question (the walker's own chunking)
OBJECTS_PER_FRAME = 1 << 16
DUMP_FACTS: dict[str, tuple[type, ...]] = {
    "pid": (int,),
    "name": (str,),
    "start_ticks": (int,),
    "python": (str,),
    "cmdline": (list,),
    "rss": (int,),
    "uss": (int,),
    "time": (int, float),
    "no_keys": (bool,),
    "fork_pause_s": (int, float),
    "walk_s": (int, float),
    "introspect": (str,),
    "memory": (dict,),
    "memory_missing": (str,),
}
WHATS = ("labels", "names", "counts", "freevars")
TEXT_MAX = 4096  # characters of one text in the facts (a reason, an allocator's name, a path)


def distinct_labels(items: list[Any]) -> dict[str, None] | None:
    """The distinct items, in the order they first come, if every item is a string of at most
    MAX_NAME characters; else None. Checked on the distinct items (a batch of labels holds a few
    dozen texts, or a big list's indices): any item that is not a string is among them, or makes
    them unhashable; their types and lengths are read at C speed."""
    try:
        distinct = dict.fromkeys(items)
    except TypeError:  # a list or a dict among them
        return None
    if distinct and (set(map(type, distinct)) != {str} or max(map(len, distinct)) > MAX_NAME):
        return None
    return distinct


def labels_ok(items: list[Any]) -> bool:
    """Is every item a string of at most MAX_NAME characters?"""
    return distinct_labels(items) is not None


class DumpError(FormatError):
    """A file that is not a whole, readable dump of this version (exit 14)."""

    help_text = (
        "Nothing of the file was used. Check that it is a whole file written by `introspect dump` "
        "(copied completely, not truncated), or take a new dump."
    )

    def __init__(self, path: str, what: str) -> None:
        FormatError.__init__(self, "dump file", what)
        self.args = (f"{path}: {what}",)
        self.msg = f"{path}: {what}"


# ---------------------------------------------------------------------------------------------
# the memory breakdown in the facts: {"memory": MEMORY, "missing": {...}, "stacks_found": text,
# "threads": n, "python_in_malloc": bytes, "copy_s": seconds}, MEMORY being breakdown.compose's
# block without its verdict and advice (the reader makes those again from the figures)

BYTES = 1 << 62
MEMORY_SIZES = ("rss", "uss", "python_objects", "native", "stacks", "other")
PYMALLOC_SIZES = ("arenas", "used", "free")
MALLOC_SIZES = ("in_use", "free", "mmapped", "arenas", "trimmable")


def _size(x: Any, optional: bool) -> bool:
    return (x is None and optional) or (type(x) is int and 0 <= x < BYTES)


def _text(x: Any, limit: int = TEXT_MAX) -> bool:
    return isinstance(x, str) and len(x) <= limit


def check_memory(path: str, block: dict[str, Any], python_objects: int) -> dict[str, Any]:
    """The facts' memory block, every field in its shape and the Python objects' bytes equal to
    the heap records' (``python_objects``), with its verdict made again; else DumpError."""

    def bad(what: str) -> DumpError:
        return DumpError(path, f"has a memory breakdown whose {what}")

    if set(block) != {"memory", "missing", "stacks_found", "threads", "python_in_malloc", "copy_s"}:
        raise bad("fields are not the dump's (memory, missing, stacks_found, threads, ...)")
    mem = block["memory"]
    if not isinstance(mem, dict) or set(mem) != {*MEMORY_SIZES, "pymalloc", "malloc"}:
        raise bad("figures are not rss, uss, python_objects, pymalloc, malloc, native, ...")
    for k in MEMORY_SIZES:
        if not _size(mem[k], k in ("python_objects", "native")):
            raise bad(f"{k} is not a byte count")
    if mem["python_objects"] is not None and mem["python_objects"] != python_objects:
        raise bad(
            f"Python objects ({mem['python_objects']:,} bytes) are not its heap records' "
            f"({python_objects:,} bytes)"
        )
    py = mem["pymalloc"]
    if py is not None and not (
        isinstance(py, dict)
        and set(py) == set(PYMALLOC_SIZES)
        and all(_size(py[k], False) for k in PYMALLOC_SIZES)
    ):
        raise bad("pymalloc is not {arenas, used, free} in bytes")
    malloc = mem["malloc"]
    if not (
        isinstance(malloc, dict)
        and set(malloc) == {"allocator", *MALLOC_SIZES}
        and (malloc["allocator"] is None or _text(malloc["allocator"]))
        and all(_size(malloc[k], True) for k in MALLOC_SIZES)
    ):
        raise bad("malloc is not {allocator, in_use, free, ...} in bytes")
    missing = block["missing"]
    if not (
        isinstance(missing, dict)
        and len(missing) <= 64
        and all(_text(k) and _text(v) for k, v in missing.items())
    ):
        raise bad("missing is not a few reasons by name")
    threads = block["threads"]
    if not (type(threads) is int and 0 <= threads < 1 << 22):
        raise bad("thread count is not a count")
    if not _size(block["python_in_malloc"], True) or not _text(block["stacks_found"]):
        raise bad("python_in_malloc or stacks_found is out of shape")
    secs = block["copy_s"]
    if type(secs) not in (int, float) or not 0 <= secs < 1e6:
        raise bad("copy_s is not a duration")
    mem = dict(mem)
    mem["verdict"], mem["advice"] = breakdown.verdict(mem, threads)
    return {**block, "memory": mem, "copy_s": float(secs)}


def memory_block(
    mem: dict[str, Any], missing: dict[str, str], stacks_found: str, threads: int,
    python_in_malloc: int | None, copy_s: float,
) -> dict[str, Any]:
    """What the writer puts in the facts (check_memory reads it back)."""
    return {
        "memory": {k: v for k, v in mem.items() if k not in ("verdict", "advice")},
        "missing": {k[:TEXT_MAX]: v[:TEXT_MAX] for k, v in list(missing.items())[:64]},
        "stacks_found": stacks_found[:TEXT_MAX],
        "threads": threads,
        "python_in_malloc": python_in_malloc,
        "copy_s": round(copy_s, 4),
    }
