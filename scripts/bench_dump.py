"""Dumps (issue 19): on one heap per size, in one run, what a dump costs against the forked look
it is built on, and what analysing the file costs against analysing the live process.

Per size one target (scripts/bench_bigheap.py --target N: about N objects, half not tracked by
gc: a list holding a list holding a dict holding bytes, per 4 objects), then in this order:
  top PID                  the walk alone: a forked copy walks, the CLI reads its records
  top PID --by retained    the live analysis
  dump PID -o FILE         the dump: walk, records and every answer streamed into the file
  top FILE --by retained   the same analysis of the file (then `top FILE`, by count)
  export FILE              the Chrome DevTools heap snapshot (unless --no-export)
each with its wall time, the CLI's CPU time (user + sys) and peak RSS (its rusage), the target's
pause (the fork's, from the JSON), the walker's walk time in the copy; for the dump the file's
size and bytes per object. The ratios issue 19 sets goals for: dump wall / walk-alone wall
(<= 1.5x), the CLI's peak while dumping at 5M objects (<= 100 MiB), `top FILE --by retained`
against `top PID --by retained` (no slower).

With --base COMMIT the same steps run for main at COMMIT too (a `git worktree` of it in a
temporary directory, removed at the end, given this tree's compiled builds), each step for both
trees in turn on the same heap, so a loaded host slows both alike; each tree's ratios are to its
own walk and live analysis.

The walk alone and the dump run --repeat times (3), in turn, after one look not counted (the
first look at a new target walks slower); the table gives each step's median run, the range of
the others, and the dump's ratio to the walk alone, of the medians and run by run.

Usage: scripts/bench-dump [--sizes 1000000,5000000] [--python PATH] [--no-export] [--base COMMIT]
                          [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bigheap import _kb, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run(python: str, argv: list[str], outdir: Path) -> dict[str, Any]:
    """One CLI run of this tree: wall, CPU, peak RSS, exit, its JSON document."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(outdir / "state")}
    rc, wall, ru, out, err_text = run_cli(
        [python, "-m", "introspect", *argv, "--json"], str(outdir), env
    )
    doc: dict[str, Any] = {}
    try:
        doc = json.loads(out)
    except ValueError:
        pass
    err = err_text.strip().splitlines()
    return {
        "rc": rc,
        "err": err[-1:] if rc else [],
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak": ru.ru_maxrss * 1024,
        "doc": doc,
    }


def steps(pid: int, d: Path, export: bool) -> list[tuple[str, list[str]]]:
    dump = str(d / "heap.pydump")
    out = [
        ("walk alone: top PID", ["top", str(pid), "-o", str(d / "t")]),
        ("live: top PID --by retained", ["top", str(pid), "--by", "retained", "-o", str(d / "r")]),
        ("dump PID", ["dump", str(pid), "-o", dump]),
        ("file: top FILE --by retained", ["top", dump, "--by", "retained", "-o", str(d / "fr")]),
        ("file: top FILE", ["top", dump, "-o", str(d / "ft")]),
    ]
    if export:
        out.append(("export FILE", ["export", dump, "-o", str(d / "heap.heapsnapshot")]))
    return out


def base_tree(tmp: Path, commit: str) -> tuple[Path, str]:
    """A worktree of ``commit`` and an interpreter that runs its code: ``run`` puts this tree
    first on PYTHONPATH, the wrapper puts the base tree there instead."""
    tree = tmp / "base"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
        check=True,
        capture_output=True,
    )
    # this tree's compiled parts (a worktree has no builds): the base's loaders refuse a build
    # of another ABI, and its Python and numpy versions run, as on a host without a compiler
    for so in REPO.glob("introspect/**/*.so"):
        shutil.copy(so, tree / so.relative_to(REPO))
    wrapper = tmp / "python-base"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{tree}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o700)
    return tree, str(wrapper)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--python", default=sys.executable, help="the target's interpreter")
    ap.add_argument("--no-export", action="store_true", help="skip `export` (minutes at 5M)")
    ap.add_argument("--base", help="also run main at this commit, step by step with this tree")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of the walk alone and the dump (medians)"
    )
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dump-"))
    rows: list[dict[str, Any]] = []
    trees: list[tuple[str, str]] = [("this tree", sys.executable)]
    base: Path | None = None
    if opts.base:
        base, python = base_tree(tmp, opts.base)
        trees.insert(0, (f"base {opts.base}", python))
    try:
        for size in [int(s) for s in opts.sizes.split(",")]:
            proc = subprocess.Popen(
                [opts.python, str(REPO / "scripts" / "bench_bigheap.py"), "--target", str(size)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None and proc.stdout is not None
            json.loads(proc.stdout.readline())
            rss = _kb(proc.pid, "VmRSS")
            d = tmp / str(size)
            d.mkdir()
            try:
                per_tree = []
                for k in range(len(trees)):
                    (d / str(k)).mkdir()
                    per_tree.append(steps(proc.pid, d / str(k), not opts.no_export))
                # the first look at a new target is slower (its heap's pages first read: 3.4 s
                # of walk at 5M against 2.1-2.3 s after): one look first, not counted
                run(trees[-1][1], ["top", str(proc.pid), "-o", str(d / "warm")], d)
                order = [
                    (rep, at)
                    for rep in range(opts.repeat)
                    for at in range(len(per_tree[0]))
                    if rep == 0 or per_tree[0][at][0] in REPEATED
                ]
                for rep, at in order:
                    for k, ((tree, python), todo) in enumerate(zip(trees, per_tree)):
                        name, argv = todo[at]
                        if name == "dump PID" and rep:
                            os.unlink(argv[-1])
                        r = run(python, argv, d / str(k))
                        r.update(step=name, size=size, target_rss=rss, tree=tree, rep=rep)
                        doc = r.pop("doc")
                        col = doc.get("collector") or {}
                        export = d / str(k) / "heap.heapsnapshot"
                        r.update(
                            objects=col.get("objects") or doc.get("objects"),
                            walk_s=col.get("walk_s"),
                            paused_s=doc.get("paused_s"),
                            file_bytes=doc.get("bytes") if name == "dump PID" else None,
                            raw_bytes=doc.get("raw_bytes"),
                            write_s=doc.get("write_s"),
                            names_s=doc.get("names_s"),
                            names_counts_s=doc.get("names_counts_s"),  # before counts moved
                            labels_s=doc.get("labels_s"),
                            labels_asked=doc.get("labels_asked"),
                            resolve_s=doc.get("resolve_s"),
                            export_bytes=(
                                os.path.getsize(export)
                                if name == "export FILE" and r["rc"] == 0
                                else None
                            ),
                        )
                        rows.append(r)
                        print(json.dumps(r), flush=True)
            finally:
                proc.kill()
                proc.wait()
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if base is not None:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(rows))
    return 0


REPEATED = ("walk alone: top PID", "dump PID")  # the ratio's two steps, run --repeat times


def _mib(b: int | None) -> str:
    return "-" if not b else f"{b / 2**20:,.1f} MiB"


def render(rows: list[dict[str, Any]]) -> str:
    trees = list(dict.fromkeys(r.get("tree", "") for r in rows))
    out = [
        "| objects | tree | step | wall | CLI CPU | CLI peak RSS | target paused | "
        "walk in the copy | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    runs: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        runs.setdefault((r["size"], r.get("tree", ""), r["step"]), []).append(r)
    # a step run several times: its median run (by wall), the others' range in the notes
    by = {key: sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2] for key, rs in runs.items()}
    for r in sorted(by.values(), key=lambda r: (r["size"], trees.index(r.get("tree", "")))):
        tree = r.get("tree", "")
        res = (
            f"{r['wall_s']:.1f} s"
            if r["rc"] == 0
            else f"**fails** (exit {r['rc']}): " + " ".join(r["err"])[:120]
        )
        walls = sorted(x["wall_s"] for x in runs[(r["size"], tree, r["step"])])
        if len(walls) > 1:
            res += f" (median of {len(walls)}: {walls[0]:.1f}-{walls[-1]:.1f} s)"
        notes = []
        walk = by.get((r["size"], tree, "walk alone: top PID"))
        live = by.get((r["size"], tree, "live: top PID --by retained"))
        if r["step"] == "dump PID" and r["rc"] == 0:
            notes.append(
                f"file {r['file_bytes']:,} B ({r['file_bytes'] / max(1, r['objects'] or 1):.1f} "
                f"B/object; {r['raw_bytes']:,} B before compression), written in "
                f"{r['write_s']:.1f} s"
            )
            if r.get("labels_s") is not None and r.get("names_counts_s") is not None:
                notes.append(
                    f"after the walk: names and counts {r['names_counts_s']:.1f} s, labels "
                    f"{r['labels_s']:.1f} s"
                )
            elif r.get("labels_s") is not None:
                notes.append(
                    f"after the walk: names {r['names_s']:.1f} s, counts and labels "
                    f"{r['labels_s']:.1f} s ({r['labels_asked']:,} labels asked of the walker)"
                )
            if r.get("resolve_s") is not None:
                notes.append(f"addresses resolved on disk in {r['resolve_s']:.1f} s")
            if walk and walk["rc"] == 0:
                notes.append(f"**{r['wall_s'] / walk['wall_s']:.2f}x the walk alone's wall**")
                pairs = zip(
                    runs[(r["size"], tree, "dump PID")],
                    runs[(r["size"], tree, "walk alone: top PID")],
                )
                each = sorted(d["wall_s"] / w["wall_s"] for d, w in pairs)
                if len(each) > 1:
                    notes.append(f"run by run {each[0]:.2f}-{each[-1]:.2f}x")
        if r["step"].startswith("file: top FILE --by") and live and live["rc"] == 0:
            notes.append(f"**{r['wall_s'] / live['wall_s']:.2f}x the live analysis's wall**")
        if r["step"] == "export FILE" and r.get("export_bytes"):
            notes.append(f"heapsnapshot {r['export_bytes']:,} B")
        paused = f"{r['paused_s'] * 1000:.1f} ms" if r.get("paused_s") else "-"
        walk_s = f"{r['walk_s']:.1f} s" if r.get("walk_s") and "FILE" not in r["step"] else "-"
        objects = r["objects"] or next((x["objects"] for x in rows if x["size"] == r["size"]), 0)
        out.append(
            f"| {r['size'] / 1e6:g}M ({(objects or 0):,}) | {tree} | `{r['step']}` | {res} | "
            f"{r['cpu_s']:.1f} s | {_mib(r['peak'])} | {paused} | {walk_s} | {'; '.join(notes)} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
