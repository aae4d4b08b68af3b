"""Where a process's memory is: RSS and USS from /proc, the allocators' figures the forked copy
read, the Python objects the walk sized; composed into parts that add up to the USS, and a verdict.

Pure functions over what was read (``read_proc`` is the only one that reads, and only /proc).
Every figure is bytes; ``None`` where it could not be measured, with the reason in ``missing``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from introspect.render.text import human_bytes

VERDICTS = ("python-objects", "pymalloc-fragmentation", "malloc-fragmentation", "native", "mixed")
# Objects larger than this are not pymalloc's (its small-request threshold, 3.8-3.15): they are
# malloc'ed, and count towards "malloc in use".
SMALL_REQUEST = 512
MiB = 1 << 20


@dataclass(frozen=True)
class Mapping:
    lo: int
    hi: int
    perms: str
    path: str
    private: int  # resident bytes only this process maps (Private_Clean + Private_Dirty)


@dataclass(frozen=True)
class ProcMemory:
    """The target's memory as /proc showed it, read before any fork: after one every anonymous
    page is mapped twice, counts as shared, and the USS falls to almost nothing."""

    rss: int
    uss: int
    maps: tuple[Mapping, ...]
    threads: int
    stack_limit: int  # the soft RLIMIT_STACK, bytes (0 if unreadable)
    preload: str  # LD_PRELOAD of the target's initial environment
    sps: tuple[int | None, ...] = ()  # each other thread's stack pointer (None: running)


def _size(x: Any, what: str, optional: bool = True) -> int | None:
    if x is None and optional:
        return None
    if type(x) is not int or not 0 <= x < 1 << 62:
        raise ValueError(f"{what} is not a byte count")
    return x


def _text(x: Any, what: str) -> str:
    if not isinstance(x, str) or len(x) > 4096:
        raise ValueError(f"{what} is not a short text")
    return x


def checked_copy(answer: dict[str, Any]) -> dict[str, Any]:
    """The walker's memory answer (it comes from a copy of the target: data, not trusted) kept
    only in the shape this module reads; ValueError names the first field out of shape."""
    out: dict[str, Any] = {}
    py = answer.get("pymalloc")
    if py is not None:
        if not isinstance(py, dict):
            raise ValueError("pymalloc is not an object")
        out["pymalloc"] = {k: _size(py.get(k), f"pymalloc.{k}", False)
                           for k in ("arenas", "used", "free", "count", "arena_size")}
    else:
        out["pymalloc"] = None
    malloc = answer.get("malloc") or {}
    if not isinstance(malloc, dict):
        raise ValueError("malloc is not an object")
    alloc = malloc.get("allocator")
    out["malloc"] = {
        "allocator": None if alloc is None else _text(alloc, "malloc.allocator"),
        **{k: _size(malloc.get(k), f"malloc.{k}")
           for k in ("in_use", "free", "mmapped", "arenas", "trimmable", "system")},
        **{k: _text(malloc[k], f"malloc.{k}") for k in ("path", "libc", "note") if k in malloc},
    }
    missing = answer.get("missing") or {}
    if not isinstance(missing, dict):
        raise ValueError("missing is not an object")
    out["missing"] = {
        _text(k, "a missing key"): _text(v, "a missing reason") for k, v in missing.items()
    }
    secs = answer.get("seconds", 0.0)
    if type(secs) not in (int, float) or not 0 <= secs < 1e6:
        raise ValueError("seconds is not a duration")
    out["seconds"] = float(secs)
    return out


def _limits_stack(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max stack size"):
                    soft = line[len("Max stack size") :].split()[0]
                    return int(soft) if soft.isdigit() else 0
    except OSError:
        pass
    return 0


def _preload(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"LD_PRELOAD="):
                    return item[len(b"LD_PRELOAD=") :].decode("utf-8", "replace")
    except OSError:
        pass
    return ""


def read_proc(pid: int) -> ProcMemory:
    """RSS, USS and the mappings of ``pid`` from /proc/PID/smaps (OSError if it cannot be read)."""
    maps: list[Mapping] = []
    rss = uss = 0
    cur: list[Any] | None = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0] if line.strip() else ""
            if "-" in head and not head.endswith(":"):
                if cur is not None:
                    maps.append(Mapping(*cur))
                parts = line.split(None, 5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = [lo, hi, parts[1], parts[5].strip() if len(parts) > 5 else "", 0]
            elif head in ("Private_Clean:", "Private_Dirty:") and cur is not None:
                kb = int(line.split()[1]) * 1024
                cur[4] += kb
                uss += kb
            elif head == "Rss:":
                rss += int(line.split()[1]) * 1024
    if cur is not None:
        maps.append(Mapping(*cur))
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        threads = 0
    return ProcMemory(
        rss, uss, tuple(maps), threads, _limits_stack(pid), _preload(pid), _thread_sps(pid)
    )


def _thread_sps(pid: int) -> tuple[int | None, ...]:
    """The stack pointer of each thread but the main one, from /proc/PID/task/TID/syscall (None for
    a thread running, not in a system call, or unreadable)."""
    out: list[int | None] = []
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit() and int(t) != pid]
    except OSError:
        return ()
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            out.append(int(fields[-2], 16) if len(fields) >= 3 else None)
        except (OSError, ValueError):
            out.append(None)
    return tuple(out)


def stacks(proc: ProcMemory) -> tuple[int, str]:
    """Resident private bytes of thread stacks, and how they were found: [stack] for the main
    thread; for each other thread parked in a system call, the mapping its stack pointer is in
    (read before the fork; the copy has no other threads); for a thread that was running,
    an anonymous mapping of the stack limit's size (glibc's default thread stack; a guess)."""
    total = sum(m.private for m in proc.maps if m.path == "[stack]")
    seen: set[int] = set()
    for sp in proc.sps:
        for m in proc.maps:
            if sp is not None and m.lo <= sp < m.hi and m.path == "" and m.lo not in seen:
                seen.add(m.lo)
                total += m.private
    unknown = sum(1 for sp in proc.sps if sp is None)
    guessed = 0
    if unknown and proc.stack_limit > 0:
        sizes = {proc.stack_limit, proc.stack_limit + 4096}
        for m in proc.maps:
            if guessed < unknown and m.path == "" and (m.hi - m.lo) in sizes and m.lo not in seen:
                seen.add(m.lo)
                total += m.private
                guessed += 1
    how = f"[stack] and {len(seen) - guessed} threads' stacks by their stack pointer"
    if unknown:
        how += f", {guessed} of {unknown} running threads' by the stack limit's size"
    return total, how


def allocator_from_maps(proc: ProcMemory) -> str:
    """The malloc in use as the mappings and LD_PRELOAD suggest (the copy resolves it exactly)."""
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in proc.preload:
            return name
    return "glibc"


def compose(
    proc: ProcMemory,
    python_objects: int | None,
    python_in_malloc: int | None,
    copy: dict[str, Any] | None,
    missing: dict[str, str],
) -> dict[str, Any]:
    """The ``memory`` block of the JSON contract. ``copy``: what the walker read (Walker.memory()),
    None without a copy; ``missing`` collects why a figure is null."""
    copy = copy or {}
    missing.update(copy.get("missing") or {})
    py = copy.get("pymalloc")
    pymalloc = (
        {"arenas": int(py["arenas"]), "used": int(py["used"]), "free": int(py["free"])}
        if py
        else None
    )
    facts = copy.get("malloc") or {}
    allocator = facts.get("allocator") or allocator_from_maps(proc)
    malloc: dict[str, Any] = {
        "allocator": allocator,
        "in_use": facts.get("in_use"),
        "free": facts.get("free"),
        "mmapped": facts.get("mmapped"),
        "arenas": facts.get("arenas"),
        "trimmable": facts.get("trimmable"),
    }
    if not copy:
        missing.setdefault(
            "pymalloc",
            "needs the forked copy (sys._debugmallocstats writes to the target's stderr: "
            "never called in the target)",
        )
        missing.setdefault(
            "malloc",
            "needs the forked copy (mallinfo2 and malloc_trim are never called in the target)",
        )
        pymalloc = None
    if python_objects is None:
        missing.setdefault("python_objects", "the Python objects were not sized")
    native = None
    if malloc["in_use"] is not None and python_in_malloc is not None:
        native = max(0, int(malloc["in_use"]) - python_in_malloc)
    elif "native" not in missing:
        missing["native"] = "needs malloc's in-use figure and the Python objects' sizes"
    stack_bytes, how = stacks(proc)
    figures: list[int | None] = [
        python_objects,
        pymalloc["free"] if pymalloc else None,
        malloc["free"],
        native,
        stack_bytes,
    ]
    known = sum(int(x) for x in figures if x is not None)
    mem: dict[str, Any] = {
        "rss": proc.rss,
        "uss": proc.uss,
        "python_objects": python_objects,
        "pymalloc": pymalloc,
        "malloc": malloc,
        "native": native,
        "stacks": stack_bytes,
        "other": max(0, proc.uss - known),
    }
    mem["verdict"], mem["advice"] = verdict(mem, proc.threads)
    missing.setdefault("stacks_found", how)
    return mem


def parts(mem: dict[str, Any]) -> dict[str, int | None]:
    """The figures that add up to the USS, by name."""
    py = mem.get("pymalloc")
    return {
        "python_objects": mem.get("python_objects"),
        "pymalloc_free": py["free"] if py else None,
        "malloc_free": (mem.get("malloc") or {}).get("free"),
        "native": mem.get("native"),
        "stacks": mem.get("stacks"),
        "other": mem.get("other"),
    }


def _m(n: float) -> str:
    return human_bytes(n)


def verdict(mem: dict[str, Any], threads: int = 0) -> tuple[str | None, str]:
    """(verdict, advice): the part that holds the most; ``mixed`` when no part holds half the USS
    and none is 1.5x the next; None when the allocator was not read (no copy)."""
    uss = max(1, int(mem["uss"]))
    py, malloc = mem.get("pymalloc"), mem.get("malloc") or {}
    cands = {
        "python-objects": mem.get("python_objects"),
        "pymalloc-fragmentation": py["free"] if py else None,
        "malloc-fragmentation": malloc.get("free"),
        "native": mem.get("native"),
    }
    known = {k: int(v) for k, v in cands.items() if v is not None}
    if not known:
        return None, "no verdict: the allocators' figures need the forked copy (see missing)"
    ranked = sorted(known.items(), key=lambda kv: -kv[1])
    lead, size = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0
    if size < uss / 2 and (mem.get("native") is None or len(ranked) < 2):
        return None, (
            f"no verdict: {lead} holds {_m(size)} of {_m(uss)} USS, and the rest cannot be split "
            "without the allocators' figures (see missing)"
        )
    if size < uss / 2 and size < 1.5 * second:
        a, b = ranked[0], ranked[1]
        return "mixed", (
            f"mixed: no single cause; {a[0]} {_m(a[1])} and {b[0]} {_m(b[1])} of {_m(uss)} USS; "
            "run `introspect growth` a few times to see which part grows"
        )
    share = f"{100 * size / uss:.0f} % of the USS"
    if lead == "python-objects":
        return lead, (
            f"python-objects: {_m(size)} in live Python objects ({share}); see which types with "
            "`introspect top PID --by size` and `introspect growth PID`, who holds them with "
            "`introspect backrefs PID TYPE`"
        )
    if lead == "pymalloc-fragmentation":
        assert py is not None
        return lead, (
            f"pymalloc-fragmentation: {_m(size)} free inside {_m(py['arenas'])} of pymalloc arenas "
            f"({_m(py['used'])} in use; {share}): a few long-lived small objects pin whole arenas, "
            "which return to the system only when empty; keep long-lived small objects apart from "
            "bulk "
            "temporary ones (build them after, or copy them out), or recycle workers "
            "(max-tasks-per-child, max-requests)"
        )
    if lead == "malloc-fragmentation":
        alloc = malloc.get("allocator") or "malloc"
        trim = malloc.get("trimmable")
        if alloc == "glibc":
            arenas = malloc.get("arenas")
            where = f"{arenas} glibc arenas" if arenas else "glibc's arenas"
            trim_s = f"; `malloc_trim` would return {_m(trim)}" if trim is not None else ""
            return lead, (
                f"malloc-fragmentation: {_m(size)} free inside {where} ({threads} threads; {share})"
                f"{trim_s}; run with MALLOC_ARENA_MAX=2 or jemalloc, or call malloc_trim(0) after "
                "big batches"
            )
        trim_s = f"; a purge would return {_m(trim)}" if trim is not None else ""
        return lead, (
            f"malloc-fragmentation: {_m(size)} resident but free in {alloc} ({share}){trim_s}; "
            "lower its decay time (jemalloc: MALLOC_CONF=dirty_decay_ms:1000,muzzy_decay_ms:0)"
        )
    return lead, (
        f"native: {_m(size)} malloc'd outside Python objects ({share}); a C extension or library "
        "allocates it: see which libraries are loaded (/proc/PID/maps), whether it rises "
        "(`introspect growth PID`), or run under memray --native"
    )


PART_NAMES = {
    "python-objects": "Python objects",
    "pymalloc-fragmentation": "pymalloc free",
    "malloc-fragmentation": "malloc free",
    "native": "native",
}
CHANGE_KEYS = ("rss", "uss", "python_objects", "native", "stacks", "other")


def _sub(a: Any, b: Any) -> int | None:
    return int(a) - int(b) if a is not None and b is not None else None


def change(prev: dict[str, Any], cur: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """The signed change of each figure since ``prev`` (the keys of ``memory``), and its verdict."""
    out: dict[str, Any] = {k: _sub(cur.get(k), prev.get(k)) for k in CHANGE_KEYS}
    pp, cp = prev.get("pymalloc"), cur.get("pymalloc")
    out["pymalloc"] = (
        {k: _sub(cp[k], pp[k]) for k in ("arenas", "used", "free")} if pp and cp else None
    )
    pm, cm = prev.get("malloc") or {}, cur.get("malloc") or {}
    out["malloc"] = {
        "allocator": cm.get("allocator"),
        **{
            k: _sub(cm.get(k), pm.get(k))
            for k in ("in_use", "free", "mmapped", "arenas", "trimmable")
        },
    }
    out["seconds"] = round(seconds, 3) if seconds is not None else None
    out["verdict"], out["advice"] = change_verdict(out)
    return out


def change_verdict(ch: dict[str, Any]) -> tuple[str | None, str]:
    """Which part explains the USS's change: the part that moved most in the USS's direction."""
    duss = ch.get("uss")
    if duss is None:
        return None, "no change measured"
    py = ch.get("pymalloc")
    cands = {
        "python-objects": ch.get("python_objects"),
        "pymalloc-fragmentation": py["free"] if py else None,
        "malloc-fragmentation": (ch.get("malloc") or {}).get("free"),
        "native": ch.get("native"),
    }
    known = {k: int(v) for k, v in cands.items() if v is not None}
    secs = ch.get("seconds")
    during = f" in {secs:.0f} s" if secs else ""
    parts_s = "; ".join(
        f"{PART_NAMES[k]} {_signed(v)}"
        for k, v in sorted(known.items(), key=lambda kv: -abs(kv[1]))
    )
    head = f"USS {_signed(duss)}{during}: {parts_s}" if parts_s else f"USS {_signed(duss)}{during}"
    if abs(duss) < MiB or not known:
        return "flat" if abs(duss) < MiB else None, head
    sign = 1 if duss > 0 else -1
    ranked = sorted(known.items(), key=lambda kv: -sign * kv[1])
    lead, size = ranked[0]
    if sign * size <= 0:
        return "mixed", head
    second = sign * ranked[1][1] if len(ranked) > 1 else 0
    if sign * size >= abs(duss) / 2 or sign * size >= 1.5 * max(0, second):
        return lead, head
    return "mixed", head


def _signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + _m(abs(n))


def lines(mem: dict[str, Any], missing: dict[str, str]) -> list[str]:
    """The breakdown as a small table and the verdict, for text output."""
    py, malloc = mem.get("pymalloc"), mem.get("malloc") or {}
    uss = max(1, int(mem["uss"]))

    def row(name: str, value: int | None, note: str) -> str:
        fig = _m(value) if value is not None else "-"
        pct = f"{100 * value / uss:5.1f} %" if value is not None else "      "
        return f"  {name:<22} {fig:>11} {pct}  {note}"

    out = [
        f"RSS {_m(mem['rss'])}, USS {_m(mem['uss'])} (read before the fork); the USS is made of:"
    ]
    out.append(
        row("Python objects", mem.get("python_objects"), "shallow sizes of every live object")
    )
    if py:
        out.append(
            row(
                "pymalloc free",
                py["free"],
                f"inside {_m(py['arenas'])} of arenas, {_m(py['used'])} used",
            )
        )
    else:
        out.append(row("pymalloc free", None, missing.get("pymalloc", "")))
    alloc = malloc.get("allocator") or "?"
    if malloc.get("free") is not None:
        extra = []
        if malloc.get("arenas") is not None:
            extra.append(f"{malloc['arenas']} arenas")
        if malloc.get("trimmable") is not None:
            extra.append(f"trimmable {_m(malloc['trimmable'])}")
        out.append(row(f"{alloc} free", malloc["free"], ", ".join(extra)))
    else:
        out.append(row(f"{alloc} free", None, missing.get("malloc", "")))
    out.append(
        row(
            "native",
            mem.get("native"),
            f"malloc in use {_m(malloc['in_use'])} less the Python objects in it"
            if malloc.get("in_use") is not None
            else missing.get("native", ""),
        )
    )
    out.append(row("thread stacks", mem.get("stacks"), missing.get("stacks_found", "")))
    out.append(
        row("other", mem.get("other"), "libraries' private pages, interpreter state, the rest")
    )
    over = sum(int(v or 0) for v in parts(mem).values()) - int(mem["uss"])
    if over > 0:
        out.append(
            f"  (the parts exceed the USS by {_m(over)}, {100 * over / uss:.1f} %: the free "
            "figures count free space whether it is resident or not)"
        )
    out.append("")
    out.append("verdict: " + (mem.get("advice") or "none"))
    return out
