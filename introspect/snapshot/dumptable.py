"""A dump's labels as dumpfile.py reads them: one code per reference into a table of distinct
texts (most repeat: ``[0]``, ``__dict__``, ``.co_code``), 4 bytes per reference.

The biggest tables come from big lists and tuples: a list of a million items brings a million
texts ``[0]`` .. ``[999999]``, which as strings (and the dict that finds their codes) would cost
a hundred bytes each in the CLI. The table keeps such an index text as its number ``k`` (the
texts ``[k]``, ``k`` in plain decimal, below the number of references) and the others as strings;
either comes back as the same string, in the same order: codes are given in the order the texts
first come, as when every text was a string. Everything is done a frame's batch at a time, at C
speed (numpy, and dict lookups through ``map``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np


class Texts(Sequence[str]):
    """The distinct label texts by code: ``ref[code]`` is ``k`` for the text ``[k]``, else
    ``-1 - j`` for ``strings[j]``."""

    def __init__(self, wide: bool = False) -> None:
        self.strings: list[str] = []
        # int32 unless k or the strings may reach 2**31 (``wide``)
        self._ref = np.zeros(1024, np.int64 if wide else np.int32)
        self._n = 0

    def add(self, ref: np.ndarray) -> None:
        need = self._n + ref.shape[0]
        if need > self._ref.shape[0]:
            self._ref.resize(max(need, self._ref.shape[0] * 3 // 2), refcheck=False)
        self._ref[self._n : need] = ref
        self._n = need

    def trim(self) -> None:
        self._ref.resize(max(self._n, 1), refcheck=False)

    def __len__(self) -> int:
        return self._n

    def _text(self, code: int) -> str:
        r = int(self._ref[code])
        return f"[{r}]" if r >= 0 else self.strings[-1 - r]

    @overload
    def __getitem__(self, code: int) -> str: ...

    @overload
    def __getitem__(self, code: slice) -> list[str]: ...

    def __getitem__(self, code: int | slice) -> str | list[str]:
        if isinstance(code, slice):
            return [self._text(c) for c in range(*code.indices(self._n))]
        if not -self._n <= code < self._n:
            raise IndexError("label code out of range")
        return self._text(code % self._n)

    def __iter__(self) -> Iterator[str]:
        strings = self.strings
        for r in self._ref[: self._n].tolist():
            yield f"[{r}]" if r >= 0 else strings[-1 - r]

    def index(self, text: Any, start: int = 0, stop: int | None = None) -> int:
        """The first code of ``text`` (found by its kind, not by making every text)."""
        lo, hi, _ = slice(start, stop).indices(self._n)
        ref = self._ref[lo:hi]
        # kept as its k, or as a string (a k past the bound the table was read with)
        k = int(index_of([text], 1 << 62)[0]) if isinstance(text, str) else -1
        at = [-1 - j for j, s in enumerate(self.strings) if s == text]
        hits = np.flatnonzero(np.isin(ref, [k] * (k >= 0) + at))
        if not hits.shape[0]:
            raise ValueError(f"{text!r} is not a label")
        return lo + int(hits[0])

    def __contains__(self, text: object) -> bool:
        try:
            self.index(text)
        except ValueError:
            return False
        return True


class Labels:
    """One label per reference, kept as a code into ``table`` (Texts), 4 bytes per reference;
    ``capacity``: the references there are (a dump's whole count, known before its labels)."""

    def __init__(self, capacity: int = 0) -> None:
        self.table = Texts(wide=capacity >= 1 << 31)
        self._index: dict[str, int] = {}  # string -> code
        self._by_k = np.zeros(0, np.int32)  # k -> code of "[k]" + 1 (0: none yet)
        self._codes = np.empty(capacity, np.int32)
        self._bound = capacity  # "[k]" kept as k below it: one way for a text, always
        self._n = 0

    def extend(self, items: list[str], distinct: dict[str, Any]) -> None:
        """``items`` checked already, ``distinct`` their distinct texts (dumpformat's
        distinct_labels, in the order they first come; its values are overwritten): those new
        to the table added to it in that order, then one code per item."""
        texts = list(distinct)
        ks = index_of(texts, self._bound)
        is_k = ks >= 0
        got = np.empty(len(texts), np.int64)  # each distinct text's code, -1 while new
        if is_k.any():
            top = int(ks.max()) + 1
            if top > self._by_k.shape[0]:
                self._by_k.resize(max(top, self._by_k.shape[0] * 3 // 2), refcheck=False)
            got[is_k] = self._by_k[ks[is_k]].astype(np.int64) - 1
        others = list(itertools.compress(texts, (~is_k).tolist()))
        got[~is_k] = np.fromiter(
            map(self._index.get, others, itertools.repeat(-1)), np.int64, len(others)
        )
        is_new = got < 0
        new = np.flatnonzero(is_new)
        if new.shape[0]:
            fresh = np.arange(len(self.table), len(self.table) + new.shape[0], dtype=np.int64)
            got[new] = fresh
            new_k = is_k[new]
            self._by_k[ks[new[new_k]]] = fresh[new_k] + 1
            strings = list(itertools.compress(texts, (is_new & ~is_k).tolist()))
            j = len(self.table.strings)
            self.table.strings += strings
            self._index.update(zip(strings, fresh[~new_k].tolist()))
            self.table.add(np.where(new_k, ks[new], -1 - (j + np.cumsum(~new_k) - 1)))
        distinct.update(zip(texts, got.tolist()))
        end = self._n + len(items)
        if end > self._codes.shape[0]:  # past the capacity: a copy (``codes`` gave out views)
            grown = np.empty(max(end, self._codes.shape[0] * 3 // 2), np.int32)
            grown[: self._n] = self._codes[: self._n]
            self._codes = grown
        self._codes[self._n : end] = np.fromiter(
            map(distinct.__getitem__, items), np.int32, len(items)
        )
        self._n = end

    @property
    def codes(self) -> np.ndarray:
        return self._codes[: self._n]

    def seal(self) -> None:
        """Every label read: the lookups that found codes are freed."""
        self._index = {}
        self._by_k = np.zeros(0, np.int32)
        self.table.trim()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k: int) -> str:
        return self.table[int(self._codes[: self._n][k])]


_NUL = 0


def index_of(texts: list[str], bound: int) -> np.ndarray:
    """For each text, ``k`` if it is ``[k]`` with ``k`` in plain decimal (ASCII digits, no
    leading zero) below ``bound``, else -1; read from the texts joined into one buffer."""
    out = np.full(len(texts), -1, np.int64)
    if not texts:
        return out
    joined = "\0".join(texts)
    if joined.count("\0") != len(texts) - 1:  # a text holds a NUL: none is split apart
        return np.array([_one_index(t, bound) for t in texts], np.int64)
    b = np.frombuffer(joined.encode("utf-8", "surrogatepass"), np.uint8)
    ends = np.flatnonzero(b == _NUL)
    starts = np.concatenate(([0], ends + 1))
    ends = np.concatenate((ends, [b.shape[0]]))
    width = ends - starts - 2  # digits between the brackets
    maybe = np.flatnonzero((width >= 1) & (width <= 18))  # k < 10**18: no int64 overflow
    if not maybe.shape[0]:
        return out
    s, e, w = starts[maybe], ends[maybe], width[maybe]
    ok = (b[s] == ord("[")) & (b[e - 1] == ord("]")) & ((b[s + 1] != ord("0")) | (w == 1))
    digit = (b - np.uint8(ord("0"))) <= 9
    nondigits = np.concatenate(([0], np.cumsum(~digit)))
    ok &= nondigits[e - 1] - nondigits[s + 1] == 0
    s, w, maybe = s[ok], w[ok], maybe[ok]
    value = np.zeros(s.shape[0], np.int64)
    for i in range(int(w.max()) if w.shape[0] else 0):
        more = w > i
        value[more] = value[more] * 10 + (b[s[more] + 1 + i] - ord("0"))
    fits = value < bound
    out[maybe[fits]] = value[fits]
    return out


def _one_index(text: str, bound: int) -> int:
    inner = text[1:-1]
    if (
        len(text) >= 3
        and text[0] == "["
        and text[-1] == "]"
        and inner.isascii()
        and inner.isdigit()
        and (inner[0] != "0" or len(inner) == 1)
        and int(inner) < bound
    ):
        return int(inner)
    return -1
