"""A dump's counts and labels, asked of the walker while the frozen copy exists: every
container's count first, then every reference's label a block of objects at a time. Lists' and
tuples' labels are made here from their items' positions (checked against the walker for one
instance per type); dict keys and attributes are asked, several questions in flight (_Asker).
Written into the dump through dumpout.py's output (the format: dumpformat.py)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import select
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from introspect.snapshot import native, records
from introspect.snapshot.dumpformat import CHUNK, labels_ok
from introspect.snapshot.dumpout import _no_key, _Out
from introspect.snapshot.dumpspill import Ranges, pread, pwrite
from introspect.snapshot.records import Snapshot

BATCH = 10 * CHUNK  # labels written per Y frame
LABEL_BLOCK = 1 << 16  # objects whose types, counts, offsets and references are read at a time
REF_BLOCK = 1 << 17  # references of a block, at most (a block of one object may have more)
COUNT_Q = 1 << 14  # positions per count question
PROBE = 64  # references of a list or tuple whose labels are asked to learn its type's order
_INDEX = np.array([f"[{i}]" for i in range(1 << 12)], object)  # the labels of small indices


def _blocks(cols: Ranges, n: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(s, e, offsets[s:e+1]) of consecutive blocks of at most LABEL_BLOCK objects holding at
    most REF_BLOCK references together; an object with more is a block of its own."""
    s = 0
    while s < n:
        e = min(n, s + LABEL_BLOCK)
        o = cols.offsets(s, e)
        if int(o[-1] - o[0]) > REF_BLOCK:
            k = int(np.searchsorted(o, o[0] + REF_BLOCK, "right")) - 1
            e = s + max(k, 1)
            o = o[: e - s + 1]
        yield s, e, o
        s = e


def _line(letter: str, nums: np.ndarray) -> bytes:
    """A question to the walker: its letter and numbers, as one token "x" + the hex of
    little-endian int32s (made and read at C speed: agent/labels.py's _snap_nums), in decimal
    if one is out of their range."""
    if nums.shape[0] and (int(nums.min()) < 0 or int(nums.max()) >= 1 << 31):
        body: str = ("%d " * nums.shape[0]) % tuple(nums.tolist())
        return f"{letter} {body}\n".encode()
    return b"%s x%s\n" % (letter.encode(), nums.astype("<i4").tobytes().hex().encode())


def _digits(x: np.ndarray) -> np.ndarray:
    """Non-negative ints in decimal: a row of ASCII digits each, right-aligned in the widest's
    width, 0 bytes before a number's first digit (numpy: a few passes, not a format per int)."""
    top = int(x.max()) if x.shape[0] else 0
    width = len(str(top))
    q = x.astype(np.uint32 if top < 1 << 32 else np.uint64)
    out = np.zeros((x.shape[0], width), np.uint8)
    for i in range(width - 1, -1, -1):
        r = q // 10
        digit = (q - r * 10).astype(np.uint8) + np.uint8(48)
        if i < width - 1:
            digit[q == 0] = 0  # before the first digit (0 itself has one: the last)
        out[:, i] = digit
        q = r
    return out


def _rows(*parts: bytes | np.ndarray) -> bytes:
    """One row of text per number, rows joined by commas: each part a text (bytes) or a column
    of non-negative ints in decimal (all columns as long). What "%d" formatting writes, at a
    quarter of its time."""
    cols = [_digits(p) if isinstance(p, np.ndarray) else p for p in parts]
    k = next(c.shape[0] for c in cols if isinstance(c, np.ndarray))
    if not k:
        return b""
    widths = [c.shape[1] if isinstance(c, np.ndarray) else len(c) for c in cols]
    row = np.zeros((k, sum(widths) + 1), np.uint8)
    at = 0
    for c, w in zip(cols, widths):
        row[:, at : at + w] = c if isinstance(c, np.ndarray) else np.frombuffer(c, np.uint8)
        at += w
    row[:, -1] = ord(",")
    flat = row.ravel()
    text: bytes = flat[flat != 0].tobytes()
    return text[:-1]


def _pairs_text(a: np.ndarray, b: np.ndarray) -> bytes:
    """``[a0,b0],[a1,b1],...`` of non-negative ints: a counts frame's items."""
    if native.lib() is not None:
        return native.rows(a, b, b"[", b",", b"]")
    return _rows(b"[", a, b",", b, b"]")


def _index_json(idx: np.ndarray) -> bytes:
    """``"[i]","[j]",...``: the labels of indices as the items of a JSON list."""
    if native.lib() is not None:
        return native.rows(idx, None, b'"[', b"", b']"')
    return _rows(b'"[', idx, b']"')


def _index_labels(idx: np.ndarray) -> list[str]:
    """``[i]`` for each index."""
    if not idx.shape[0]:
        return []
    if int(idx.max()) < _INDEX.shape[0]:
        out: list[str] = _INDEX[idx].tolist()
        return out
    return list(map("[{}]".format, idx.tolist()))


def _strings_json(labels: list[str]) -> bytes:
    """The items of a JSON list of ``labels`` (what json.dumps writes between its brackets): joined
    at once when no label has anything to escape (printable ASCII, no quote or backslash)."""
    raw = "".join(labels)
    if raw.isascii() and raw.isprintable() and '"' not in raw and "\\" not in raw:
        return ('"' + '","'.join(labels) + '"').encode()
    return json.dumps(labels, separators=(",", ":"))[1:-1].encode()


def _first_index(holder: np.ndarray, child: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per reference, the least ``idx`` among the references of its holder to the same child
    (a child held twice by a list gets its first index's label, as the walker answers)."""
    if idx.shape[0] < 2:
        return idx
    key = holder.astype(np.int64) << np.int64(32) | child.astype(np.int64)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    same = ks[1:] == ks[:-1]
    if not same.any():
        return idx
    start = np.flatnonzero(np.concatenate(([True], ~same)))
    least = np.minimum.reduceat(idx[order], start)
    out = np.empty_like(idx)
    out[order] = np.repeat(least, np.diff(np.append(start, idx.shape[0])))
    return out


class _Kept:
    """Every object's count (-1: none asked) while the labels are made: in an unnamed file next
    to the dump (``where``), or in memory for a snapshot held whole (--keep)."""

    def __init__(self, n: int, where: str | None) -> None:
        self.arr: np.ndarray | None = None
        self.file: Any = None
        if where is None:
            self.arr = np.full(n, -1, np.int64)
        else:
            self.file = tempfile.TemporaryFile(dir=where, prefix=".introspect-dump-", buffering=0)
            os.ftruncate(self.file.fileno(), 8 * n)

    def put(self, s: int, values: np.ndarray) -> None:
        if self.arr is not None:
            self.arr[s : s + values.shape[0]] = values
        else:
            pwrite(self.file.fileno(), values.astype("<i8"), s)

    def get(self, s: int, e: int) -> np.ndarray:
        if self.arr is not None:
            return self.arr[s:e]
        return pread(self.file.fileno(), "<i8", s, e)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.arr = None


class _Counts:
    """The containers' item counts of one block, as their answers come."""

    def __init__(self, s: int, e: int) -> None:
        self.s = s
        self.values = np.full(e - s, -1, np.int64)
        self.left = 0


class _Labeller:
    """Every container's count (Y counts) and every reference's label (Y labels, in the order of
    ``refs``), a block of objects at a time. The walker answers what only it knows (dict keys,
    attributes, ...) to "L" questions; the items of a list or tuple are labelled here from their
    positions (``[i]``: CPython traverses them last item first, which a few of each type's
    answers, asked of the walker, confirm) when the walk streamed every item (its count equals
    its references). Every count is asked first (kept meanwhile: _Kept), then the labels, the
    questions asked ahead of their answers (_Asker): the walker and the CLI work at once."""

    def __init__(
        self,
        out: _Out,
        snap: Snapshot,
        cols: Ranges,
        walker: Any,
        containers: np.ndarray,
        no_keys: bool,
        log: Callable[[str], None],
        where: str | None = None,
    ) -> None:
        self.out, self.snap, self.cols, self.walker = out, snap, cols, walker
        self.kept = _Kept(snap.n, where)
        self.n, self.total = snap.n, int(snap.refs.shape[0])
        self.containers, self.no_keys, self.log = containers, no_keys, log
        self.seq = np.array([i for i, t in enumerate(snap.types) if t in ("list", "tuple")])
        counted = set(containers.tolist())
        # list or tuple type index -> its order: None (not known yet), "reversed", "forward" or
        # "ask" (neither: the walker is asked for every label)
        self.order: dict[int, str | None] = {int(k): None for k in self.seq if int(k) in counted}
        self.asker = _Asker(walker) if getattr(walker, "cfd", -1) >= 0 else None
        self.buf: list[bytes] = []  # labels as JSON lists' items (what a Y frame holds)
        self.held = 0  # labels in buf
        self.written = 0
        self.asked = 0

    def run(self) -> int:
        # the counts first (every counts frame before the labels': a reader that parses them
        # among the labels' frames fragments its heap, +29 MiB at 5M objects), then the labels,
        # each block's lists and tuples checked against its counts, kept on disk meanwhile
        boxes: deque[_Counts] = deque()
        for s in range(0, self.n, LABEL_BLOCK):
            boxes.append(self._count(s, min(self.n, s + LABEL_BLOCK)))
        for block in _blocks(self.cols, self.n):
            while boxes and boxes[0].s < block[1]:
                self._settle(boxes.popleft())
            self._label(block, self.kept.get(block[0], block[1]))
        if self.asker is not None:
            self.asker.drain()
        if self.buf:
            self._flush()
        return self.written

    # counts ---------------------------------------------------------------------------------

    def _count(self, s: int, e: int) -> _Counts:
        box = _Counts(s, e)
        pos = np.zeros(0, np.int64)
        if self.containers.shape[0]:
            pos = np.flatnonzero(np.isin(self.cols.type_of(s, e), self.containers)) + s
        if not pos.shape[0]:  # nothing to ask: every count -1
            self.kept.put(s, box.values)
            box.values = np.zeros(0, np.int64)
            return box
        for k in range(0, pos.shape[0], COUNT_Q):
            part = pos[k : k + COUNT_Q]
            done = functools.partial(self._counted, box, part)
            box.left += 1
            if self.asker is None:
                done(self.walker.counts(part.tolist()))
            else:
                self.asker.ask(_line("I", part), part.shape[0], done, None)
        return box

    def _counted(self, box: _Counts, part: np.ndarray, got: list[int] | np.ndarray) -> None:
        a = np.asarray(got, np.int64)
        if a.shape[0] and (int(a.min()) < -1 or int(a.max()) > self.total + self.n):
            raise records.FormatError(
                "answer type", "the walker's answer to 'C' has a count out of range"
            )
        box.values[part - box.s] = a
        box.left -= 1
        if not box.left:
            self.kept.put(box.s, box.values)
            box.values = np.zeros(0, np.int64)  # on disk now (a view would keep the array)
        keep = a != -1
        k = int(np.count_nonzero(keep))
        if k:
            self.out.frame(
                b"Y",
                b'{"what":"counts","start":%d,"items":[%s]}'
                % (int(part[0]), _pairs_text(part[keep], a[keep])),
            )

    def _settle(self, box: _Counts) -> None:
        while box.left:
            assert self.asker is not None  # (answered at once without one)
            self.asker.one()

    # labels ---------------------------------------------------------------------------------

    def _put(self, labels: list[str]) -> None:
        if labels:
            self._put_text(_strings_json(labels), len(labels))

    def _put_index(self, idx: np.ndarray) -> None:
        """The labels ``[i]`` of indices ``idx``, written as JSON at once (numpy)."""
        if idx.shape[0]:
            self._put_text(_index_json(idx), idx.shape[0])

    def _put_text(self, text: bytes, count: int) -> None:
        self.buf.append(text)
        self.held += count
        if self.held >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """The labels held as one Y frame (as out.json writes {"what", "start", "items"})."""
        self.out.frame(
            b"Y",
            b'{"what":"labels","start":%d,"items":[%s]}' % (self.written, b",".join(self.buf)),
        )
        self.written += self.held
        self.buf, self.held = [], 0

    def _label(self, block: tuple[int, int, np.ndarray], counts: np.ndarray) -> None:
        s, e, o = block
        base = int(o[0])
        refs = self.cols.refs(base, int(o[-1]))
        if not refs.shape[0]:
            return
        nref = np.diff(o)
        t = self.cols.type_of(s, e)
        rel = (o - base)[:-1]  # each object's first reference in refs
        # lists and tuples whose every item was streamed: labelled from their positions
        cand = np.isin(t, list(self.order)) & (counts == nref) & (nref > 0)
        many = np.zeros(e - s, bool)  # holds two children or more
        if cand.any():
            at = np.flatnonzero(cand)
            lo = np.minimum.reduceat(refs, rel[at])  # (every candidate has a reference)
            hi = np.maximum.reduceat(refs, rel[at])
            many[at] = lo != hi
            for k, how in list(self.order.items()):
                if how is None:
                    first = np.flatnonzero(cand & many & (t == k) & (nref <= REF_BLOCK))
                    if first.shape[0]:
                        i = int(first[0])
                        self._probe(k, s + i, refs[rel[i] : rel[i] + nref[i]])
        kinds = np.full(e - s, "", "<U8")
        for k, how in self.order.items():
            kinds[t == k] = how or ""
        # the order known, or any order gives the same labels (one child, maybe many times)
        der = cand & ((kinds == "reversed") | (kinds == "forward") | (~many & (kinds == "")))
        if e - s == 1 and nref[0] > REF_BLOCK:  # one big object: its labels streamed
            how = "ask"
            if cand[0] and many[0]:  # from positions if its items are distinct
                ordered = np.sort(refs)
                distinct = not bool((ordered[1:] == ordered[:-1]).any())
                del ordered
                k = int(t[0])
                if distinct and self.order.get(k) is None:
                    self._probe(k, s, refs, distinct=True)
                if distinct and self.order.get(k) in ("reversed", "forward"):
                    how = str(self.order[k])
            self._big(s, refs, how)
            return
        dref = np.repeat(der, nref)
        holder = np.repeat(np.arange(e - s), nref)
        derived = np.full(refs.shape[0], -1, np.int64)  # each derived label's index
        if der.any():
            j = np.arange(refs.shape[0]) - np.repeat(rel, nref)  # its rank in its holder
            fwd = np.repeat(kinds == "forward", nref)
            idx = np.where(fwd, j, np.repeat(nref, nref) - 1 - j)[dref]
            multi = np.repeat(der & (nref > 1), nref)[dref]  # maybe a child held twice
            if multi.any():
                idx[multi] = _first_index(holder[dref][multi], refs[dref][multi], idx[multi])
            derived[dref] = idx
            del j, fwd, idx, multi
        asked = np.flatnonzero(~dref)
        hidden = None
        if self.no_keys:
            hidden = ~np.isin(t, self.seq)
        self._merge(s, refs, holder, derived, asked, hidden)

    def _merge(
        self,
        s: int,
        refs: np.ndarray,
        holder: np.ndarray,
        derived: np.ndarray,
        asked: np.ndarray,
        hidden: np.ndarray | None,
    ) -> None:
        """The block's labels put in order: the derived ones (``derived``: their indices, -1
        for the asked ones) made as they are put, a BATCH at a time, each answer of the walker (a
        CHUNK of the asked references) in its place as it comes."""
        cursor = [0]

        def upto(end: int, at: np.ndarray | None, got: list[str] | None) -> None:
            if at is not None and got is not None and hidden is not None:
                hide = hidden[holder[at]]
                if hide.any():
                    got = [_no_key(g) if h else g for g, h in zip(got, hide.tolist())]
            # the derived labels before the answer's first reference: a BATCH at a time
            first = int(at[0]) if at is not None else end
            while cursor[0] < first:
                b = min(first, cursor[0] + BATCH)
                self._put_index(derived[cursor[0] : b])
                cursor[0] = b
            if at is None or got is None:
                return
            idx = derived[first:end]
            part: np.ndarray = np.empty(end - first, object)
            mine = idx >= 0
            if mine.any():
                part[mine] = _index_labels(idx[mine])
            part[at - first] = got
            cursor[0] = end
            self._put(part.tolist())

        for k in range(0, asked.shape[0], CHUNK):
            at = asked[k : k + CHUNK]
            pairs = np.empty(2 * at.shape[0], np.int64)
            pairs[0::2], pairs[1::2] = holder[at] + s, refs[at]
            self.asked += at.shape[0]
            done = functools.partial(upto, int(at[-1]) + 1, at)
            if self.asker is None:
                done(self.walker.labels(list(zip(pairs[0::2].tolist(), pairs[1::2].tolist()))))
            else:
                self.asker.ask(_line("L", pairs), at.shape[0], done, labels_ok)
        tail = functools.partial(upto, refs.shape[0], None, None)
        if self.asker is None:
            tail()
        else:
            self.asker.later(tail)

    def _big(self, pos: int, refs: np.ndarray, how: str) -> None:
        """The labels of one big object, a batch at a time: of a list or tuple of distinct items
        from their positions (``how``: their order), else asked of the walker (which maps the
        holder's items once for all its questions)."""
        m = refs.shape[0]
        if how in ("reversed", "forward"):

            def put() -> None:
                for a in range(0, m, BATCH):
                    j = np.arange(a, min(m, a + BATCH))
                    self._put_index(j if how == "forward" else m - 1 - j)

            if self.asker is None:
                put()
            else:
                self.asker.later(put)
            return
        hide = self.no_keys and not bool(np.isin(self.cols.type_of(pos, pos + 1), self.seq)[0])

        def done(got: list[str]) -> None:
            self._put([_no_key(g) for g in got] if hide else got)

        for a in range(0, m, CHUNK):
            kids = refs[a : a + CHUNK]
            self.asked += kids.shape[0]
            if self.asker is None:
                done(self.walker.labels([(pos, c) for c in kids.tolist()]))
                continue
            pairs = np.full(2 * kids.shape[0], pos, np.int64)
            pairs[1::2] = kids
            self.asker.ask(_line("L", pairs), kids.shape[0], done, labels_ok)

    def _probe(self, kind: int, pos: int, kids: np.ndarray, distinct: bool = False) -> None:
        """The order of a list or tuple type's references, learnt from the walker's labels of
        one of its instances holding two children or more (its first PROBE references);
        ``distinct``: its children are (each label its own position)."""
        m = kids.shape[0]
        k = min(m, PROBE)
        if self.asker is not None:
            self.asker.drain()
        got = self.walker.labels([(pos, int(c)) for c in kids[:k].tolist()])
        if self.asker is not None:
            self.asker.resume()
        self.asked += k
        zeros = np.zeros(m, np.int64)
        how = "ask"
        for name, idx in (("reversed", m - 1 - np.arange(m)), ("forward", np.arange(m))):
            if not distinct:
                idx = _first_index(zeros, kids, idx)
            if _index_labels(idx[:k]) == got:
                how = name
                break
        self.order[kind] = how
        self.log(f"dump: the items of {self.snap.types[kind]} are traversed: {how}")


AHEAD = 4  # questions asked of the walker before the first one's answer is read
PIPE_SIZE = 1 << 20  # bytes each pipe to and from the walker holds (when the system allows)


class _Asker:
    """Questions to the walker (labels, counts), AHEAD asked ahead: the walker makes the next
    answers while the CLI files the last one (both at work, not taking turns). A question is
    written without blocking; if the control FIFO is full, the pending answer is read first
    (the walker may be waiting for it to be read), so neither side waits on the other forever.
    Answers are checked as the walker's own questions check them (a list of as many entries as
    were asked, each of the right type: ``check``). ``later`` queues work of the CLI's own that
    must come after the answers pending (labels made here, in the order of the references)."""

    def __init__(self, walker: Any) -> None:
        self.walker = walker
        # (entries asked, None: the CLI's own work; what to do with the answer; its check; the
        # question's letter)
        self.pending: deque[tuple[int | None, Callable[..., None], Any, str]] = deque()
        self.questions = 0  # of them pending
        os.set_blocking(walker.cfd, False)
        # the questions' and the answers' pipes widened (Linux; a user's bound: 1 MiB): a count
        # question (COUNT_Q positions, 8 hex digits each) and several answers fit whole, so
        # neither side waits for the other to read a part
        for fd in (walker.cfd, getattr(walker.reader, "fd", -1)):
            try:  # (F_GETPIPE_SZ, F_SETPIPE_SZ: Python 3.10+ names them)
                if fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)) < PIPE_SIZE:
                    fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
            except (OSError, ValueError, TypeError):
                pass

    def ask(
        self,
        line: bytes,
        count: int,
        done: Callable[[list[Any]], None],
        check: Callable[[list[Any]], bool] | None,
    ) -> None:
        """``line`` asked, ``done`` called with its answer in turn: a JSON list whose entries
        pass ``check``, or (``check`` None: an "I" question) little-endian int64s, an array."""
        w, view = self.walker, memoryview(line)
        while view:
            try:
                view = view[os.write(w.cfd, view) :]
            except BlockingIOError:
                if self.questions:
                    self.one()
                else:  # the walker has yet to read the last question: wait for room
                    if time.monotonic() > w.deadline or not w.alive():
                        raise records.StreamError("the snapshot walker stopped answering")
                    select.select([], [w.cfd], [], 0.5)
        self.pending.append((count, done, check, line[:1].decode(errors="replace")))
        self.questions += 1
        while self.questions > AHEAD or (self.pending and self.pending[0][0] is None):
            self.one()

    def later(self, work: Callable[[], None]) -> None:
        """``work`` done after the answers pending (at once if none). Blocks of labels made
        here without a question would queue up behind the last answers, each holding its
        arrays: past 2 * AHEAD entries, the first is done (its answer read) first."""
        if not self.pending:
            work()
            return
        self.pending.append((None, work, None, ""))
        while len(self.pending) > 2 * AHEAD:
            self.one()

    def one(self) -> None:
        """The first pending entry done: an answer read and filed, or the CLI's own work."""
        count, done, check, what = self.pending.popleft()
        if count is None:
            done()
            return
        self.questions -= 1
        kind, payload = self.walker.reader.frame()
        if kind != b"L":
            raise records.FormatError(
                "answer frame", f"a {kind!r} frame where an answer ('L') belongs"
            )
        if check is None:  # int64s
            if len(payload) != 8 * count:
                raise records.FormatError(
                    "answer shape",
                    f"the walker's answer to {what!r} is not {count} int64s",
                )
            done(np.frombuffer(payload, "<i8"))
            return
        answer = records._json(kind, payload)
        if not isinstance(answer, list) or len(answer) != count:
            raise records.FormatError(
                "answer shape",
                f"the walker's answer to {what!r} is not a list of {count} entries",
            )
        if not check(answer):
            raise records.FormatError(
                "answer type",
                f"an entry of the walker's answer to {what!r} has the wrong type",
            )
        done(answer)

    def drain(self) -> None:
        """Every pending entry done (before a question whose answer is read at once)."""
        while self.pending:
            self.one()
        os.set_blocking(self.walker.cfd, True)

    def resume(self) -> None:
        os.set_blocking(self.walker.cfd, False)
