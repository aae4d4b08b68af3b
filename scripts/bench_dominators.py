"""Dominator trees on graphs shaped like our heap snapshots: python-igraph (what introspect uses,
introspect/snapshot/heap.py) against rustworkx and networkx, each measured in its own process.

Graphs (numpy edge arrays, one virtual root as in ``heap.analyse``; everything reachable from it):
  synthetic, seeded, V = E / 3 objects (3.3M for 10M edges):
    - the virtual root -> V/3300 roots (modules, frames, objects held from C);
    - a random recursive tree over all objects (each object's first holder is an older object,
      chosen uniformly): every object is reachable;
    - the remaining edges, E - V: 70% to 10,000 "shared" objects picked with a Zipf law (types,
      interned strings, small ints, None: a few are held by almost everyone), 25% from an object
      back to its tree parent (cycles: an instance and its class, a node and its parent), 5%
      between two uniformly random objects (cross references: one object held by two holders,
      which moves its idom up). The dominator tree is then a few levels deep, most objects
      retained by a container, as in a heap (the run prints its depth).
  chain (--chains K,...): a linked list K nodes long (each node dominated by the one before it: a
    dominator tree K deep), each node's value also held by one shallow index (a dict): every
    value's idom is the virtual root. The iterative algorithm (rustworkx, networkx) walks up the
    chain for each value, so its time grows with K squared; Lengauer-Tarjan's does not.
  real (--real-objects N): a forked snapshot of scripts/bench_target.py's mixed heap (lists holding
    dicts of atomic values holding bytes, ~N objects), taken by the agent's walker as the CLI does,
    with roots = modules, frames and objects held from C, as ``heap.analyse`` builds them.

For each graph, --repeat rounds of one fresh process per library (each library once per round, so
the machine's load spreads over all; a library whose run takes over a minute is not run again; a
process past --cap seconds or --max-rss GiB is killed by its pid): time to import the library, to
build its graph from the numpy arrays and to compute the immediate dominators (wall and CPU
seconds: CPU time moves less with the load of a shared machine), to turn the result into a numpy
idom array; the process's peak RSS (VmHWM) and its RSS before building (the arrays loaded).
Every library's idom array must equal igraph's exactly. Install sizes: the library and its dependencies other
than numpy (which introspect needs anyway), as installed (files listed in each RECORD) and as
wheels (``pip download --no-deps`` of the installed versions).

The libraries live in a throwaway venv (--venv, made and filled with pip on first use), never in
the project's. Run it niced on a shared machine: ``nice -n 10 scripts/bench-dominators``.

Results: a table on stdout (medians; "load" is the machine's 1-minute load average as each run
started, on a shared machine) and bench-results/bench-dominators-<time>.json.

Usage: scripts/bench-dominators [--edges 1000000,10000000] [--chains 20000,80000] [--libs igraph,rustworkx,networkx]
       [--repeat 3] [--cap 600] [--max-rss GIB] [--venv DIR] [--real-objects N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LIBS = ("igraph", "rustworkx", "networkx")
PACKAGES = {"igraph": "igraph", "rustworkx": "rustworkx", "networkx": "networkx"}  # library -> distribution
LONG_S = 60.0  # a run longer than this is not repeated


# ---------------------------------------------------------------- the worker (in the libraries' venv)

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _built(seconds: float) -> None:
    """Tell the driver the graph is built (what it says of a process it kills at the cap)."""
    sys.stderr.write(json.dumps({"built_s": seconds, "rss": _status_kib("VmRSS") * 1024}) + "\n")
    sys.stderr.flush()


def _from_mapping(d: dict[int, int], nv: int, root: int) -> np.ndarray:
    idom = np.full(nv, -2, np.int64)  # -2: unreachable
    idom[np.fromiter(d.keys(), np.int64, len(d))] = np.fromiter(d.values(), np.int64, len(d))
    idom[root] = -1
    return idom


def worker(lib: str, gdir: Path) -> dict[str, Any]:
    """Build ``lib``'s graph from the arrays in ``gdir``, compute the immediate dominators from the
    virtual root, write them to ``gdir/idom-<lib>.npy``; return the times and memory."""
    meta = json.loads((gdir / "graph.json").read_text())
    nv, root = int(meta["vertices"]), int(meta["root"])
    src, dst = np.load(gdir / "src.npy"), np.load(gdir / "dst.npy")
    rss_arrays = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    if lib == "igraph":
        import igraph

        t1, c1 = time.perf_counter(), time.process_time()
        g = igraph.Graph(n=nv, directed=True)  # as heap.analyse builds it
        g.add_edges(np.column_stack([src, dst]))
        t2, c2 = time.perf_counter(), time.process_time()
        _built(t2 - t1)
        dom = g.dominator(root, mode="out")
        t3, c3 = time.perf_counter(), time.process_time()
        # NaN marks what the root does not reach, -1 the root itself
        idom = np.nan_to_num(np.asarray(dom, dtype=np.float64), nan=-2).astype(np.int64)
        version = igraph.__version__
    elif lib == "rustworkx":
        import rustworkx as rx

        t1, c1 = time.perf_counter(), time.process_time()
        rg = rx.PyDiGraph(node_count_hint=nv, edge_count_hint=int(src.shape[0]))
        rg.add_nodes_from([None] * nv)
        rg.extend_from_edge_list(list(zip(src.tolist(), dst.tolist())))  # takes (int, int) tuples only
        t2, c2 = time.perf_counter(), time.process_time()
        _built(t2 - t1)
        rdom = rx.immediate_dominators(rg, root)  # {node: idom}, the root mapped to itself
        t3, c3 = time.perf_counter(), time.process_time()
        idom = _from_mapping(rdom, nv, root)
        version = rx.__version__
    elif lib == "networkx":
        import networkx as nx

        t1, c1 = time.perf_counter(), time.process_time()
        ng = nx.DiGraph()
        ng.add_nodes_from(range(nv))
        ng.add_edges_from(zip(src.tolist(), dst.tolist()))
        t2, c2 = time.perf_counter(), time.process_time()
        _built(t2 - t1)
        ndom = nx.immediate_dominators(ng, root)  # {node: idom}; the root in it or not, by version
        t3, c3 = time.perf_counter(), time.process_time()
        idom = _from_mapping(ndom, nv, root)
        version = nx.__version__
    else:
        raise SystemExit(f"unknown library {lib!r}: one of {', '.join(LIBS)}")
    t4 = time.perf_counter()
    np.save(gdir / f"idom-{lib}.npy", idom)
    return {"lib": lib, "version": version, "import_s": t1 - t0, "build_s": t2 - t1, "dominator_s": t3 - t2,
            "to_numpy_s": t4 - t3, "build_cpu_s": c2 - c1, "dominator_cpu_s": c3 - c2, "rss_arrays": rss_arrays, "peak_rss": _status_kib("VmHWM") * 1024}


# ---------------------------------------------------------------- graphs

def synthetic(edges: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """(src, dst, vertices including the virtual root, facts): see the module's docstring."""
    rng = np.random.default_rng(seed)
    n = edges // 3
    roots = max(1, n // 3300)
    vroot = n
    tree_parent = np.empty(n, np.int64)
    tree_parent[:roots] = vroot
    i = np.arange(roots, n, dtype=np.int64)
    tree_parent[roots:] = (rng.random(i.shape[0]) * i).astype(np.int64)  # uniform among the older objects
    extra = edges - n
    n_shared, n_back = extra * 70 // 100, extra * 25 // 100
    n_cross = extra - n_shared - n_back
    hubs = rng.choice(n, size=min(n, 10_000), replace=False)
    zipf = np.minimum(rng.zipf(1.5, n_shared) - 1, hubs.shape[0] - 1)
    child = rng.integers(roots, n, n_back)
    src = np.concatenate([tree_parent, rng.integers(0, n, n_shared), child, rng.integers(0, n, n_cross)])
    dst = np.concatenate([np.arange(n, dtype=np.int64), hubs[zipf], tree_parent[child], rng.integers(0, n, n_cross)])
    order = rng.permutation(src.shape[0])  # no library should gain from edges listed tree first
    facts = {"kind": "synthetic", "seed": seed, "roots": roots, "tree_edges": n, "to_shared": int(n_shared),
             "back_to_parent": int(n_back), "cross": int(n_cross)}
    return src[order], dst[order], n + 1, facts


def chain(k: int) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """(src, dst, vertices, facts): see the module's docstring. Vertex 0 is the index dict, 1..k
    the list's nodes, k+1..2k their values, 2k+1 the virtual root."""
    vroot, index = 2 * k + 1, 0
    nodes = np.arange(1, k + 1, dtype=np.int64)
    vals = nodes + k
    src = np.concatenate([[vroot, vroot], nodes[:-1], nodes, np.full(k, index)])
    dst = np.concatenate([[index, 1], nodes[1:], vals, vals])
    return src, dst, 2 * k + 2, {"kind": "chain", "length": k}


REAL_VICTIM = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[4])
import bench_target
objects = bench_target.build_mixed(int(sys.argv[5]))
agent = sys.argv[3]
ns = {"__name__": "__introspect_agent__", "__file__": agent}
with open(agent, "rb") as f:
    exec(compile(f.read(), agent, "exec"), ns)
result = ns["cmd_snapshot"]({"stream": sys.argv[1], "control": sys.argv[2], "child_deadline": time.time() + 900})
sys.stdout.write(json.dumps(result) + "\n")
"""


def real(objects: int, python: str, tmp: Path) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """A forked snapshot of bench_target's mixed heap, as the CLI takes it, turned into edge arrays
    the way ``heap.analyse`` does (virtual root -> modules, frames, then objects held from C)."""
    sys.path.insert(0, str(REPO))
    import igraph

    from introspect.agent import AGENT_PATH
    from introspect.snapshot.collect import Walker
    from introspect.snapshot.records import Reader, read_snapshot

    stream, control = str(tmp / "stream"), str(tmp / "control")
    os.mkfifo(stream, 0o600)
    os.mkfifo(control, 0o600)
    fd = os.open(stream, os.O_RDONLY | os.O_NONBLOCK)
    proc = subprocess.Popen([python, "-c", REAL_VICTIM, stream, control, str(AGENT_PATH), str(REPO / "scripts"), str(objects)],
                            stdout=subprocess.PIPE, text=True)
    walker = None
    try:
        reader = Reader(fd, time.monotonic() + 900)
        metas: list[dict[str, Any]] = []
        snap = read_snapshot(reader, on_meta=metas.append)
        walker = Walker(reader, control, int(metas[0]["pid"]), int(metas[0]["start_ticks"]), reader.deadline)
    finally:
        if walker is not None:
            walker.close()
            walker.kill()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        os.close(fd)
    n = snap.n
    counts = np.diff(snap.offsets)
    src = np.repeat(np.arange(n, dtype=np.int64), counts)
    dst = snap.refs.astype(np.int64)
    first = np.unique(np.fromiter((r.pos for r in snap.roots), np.int64))
    # held from C: unreached from the modules and frames, with more references than the graph shows
    g = igraph.Graph(n=n + 1, directed=True)
    g.add_edges(np.column_stack([src, dst]))
    g.add_edges(np.column_stack([np.full(first.shape[0], n, np.int64), first]))
    seen = np.zeros(n + 1, bool)
    seen[np.asarray(g.bfs(n, mode="out")[0], dtype=np.int64)] = True
    indeg = np.bincount(snap.refs, minlength=n)
    c_held = np.nonzero((snap.excess > indeg) & ~seen[:n])[0].astype(np.int64)
    vroot_to = np.concatenate([first, c_held])
    src = np.concatenate([src, np.full(vroot_to.shape[0], n, np.int64)])
    dst = np.concatenate([dst, vroot_to])
    facts = {"kind": "real", "objects_asked": objects, "roots": int(first.shape[0]), "held_from_c": int(c_held.shape[0]),
             "python": python}
    return src, dst, n + 1, facts


def describe(idom: np.ndarray, root: int) -> dict[str, Any]:
    """How deep the dominator tree is: the share under the root directly, the depth (by pointer
    jumping: log2(depth) passes, a chain 80,000 deep included)."""
    reach = idom != -2
    anc = np.where(idom >= 0, idom, -1)
    depth = (anc >= 0).astype(np.int64)
    while (anc >= 0).any():
        has = anc >= 0
        up = np.maximum(anc, 0)
        depth = np.where(has, depth + depth[up], depth)
        anc = np.where(has, anc[up], -1)
    return {"reachable": int(reach.sum()), "dominated_by_root": int((idom == root).sum()), "max_depth": int(depth.max()),
            "mean_depth": round(float(depth[reach].mean()), 2)}


# ---------------------------------------------------------------- the driver

def ensure_venv(venv: Path, libs: list[str]) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    missing = [lib for lib in ["numpy", *libs]
               if subprocess.run([str(py), "-c", f"import {lib}"], capture_output=True, timeout=120).returncode]
    if missing:
        print(f"installing {', '.join(missing)} into {venv}", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *[PACKAGES.get(m, m) for m in missing]], check=True, timeout=1800)
    return py


def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_worker(py: Path, lib: str, gdir: Path, cap: float, max_rss: float) -> dict[str, Any]:
    """One fresh process, its peak RSS sampled meanwhile; killed (by its pid) past ``cap`` seconds
    or ``max_rss`` bytes (the machine is shared: a library that needs more is reported as such)."""
    t0 = time.monotonic()
    load = os.getloadavg()[0]  # the machine is shared: what else ran is part of the figure
    proc = subprocess.Popen([str(py), __file__, "--worker", lib, str(gdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        return _wait_worker(proc, lib, t0, load, cap, max_rss)
    finally:
        if proc.poll() is None:  # interrupted: never leave a worker behind
            proc.kill()
            proc.wait(60)


def _wait_worker(proc: subprocess.Popen[str], lib: str, t0: float, load: float, cap: float, max_rss: float) -> dict[str, Any]:
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_kib(proc.pid))
        took = time.monotonic() - t0
        if took > cap or peak * 1024 > max_rss:
            proc.kill()
            _out, err = proc.communicate(timeout=60)
            built = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
            return {"lib": lib, "capped": True, "cap_s": cap, "killed_after_s": took, "over_max_rss": peak * 1024 > max_rss,
                    "peak_rss": peak * 1024, "built_s": built[0]["built_s"] if built else None, "load1": load}
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        return {"lib": lib, "error": f"exit {proc.returncode}: {err.strip()[-2000:]}", "peak_rss": peak * 1024, "load1": load}
    doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    doc["wall_s"] = time.monotonic() - t0
    doc["load1"] = load
    return doc


def measure(py: Path, libs: list[str], gdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    meta = json.loads((gdir / "graph.json").read_text())
    rows: dict[str, Any] = {}
    runs_of: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
    done: set[str] = set()
    for _ in range(opts.repeat):  # each library once per round: the machine's load spreads over all
        for lib in libs:
            if lib in done:
                continue
            r = run_worker(py, lib, gdir, opts.cap, opts.max_rss * 2**30)
            runs_of[lib].append(r)
            print(f"  {lib}: {_brief(r)}", flush=True)
            if "error" in r or r.get("capped") or r["build_s"] + r["dominator_s"] > LONG_S:
                done.add(lib)
    for lib in libs:
        runs = runs_of[lib]
        ok = [r for r in runs if "error" not in r and not r.get("capped")]
        row: dict[str, Any] = {"runs": runs}
        if ok:
            for k in ("import_s", "build_s", "dominator_s", "to_numpy_s", "build_cpu_s", "dominator_cpu_s", "peak_rss", "rss_arrays", "load1"):
                row[k] = statistics.median(r[k] for r in ok)
            row["version"] = ok[0]["version"]
            if lib != "igraph" and (gdir / "idom-igraph.npy").exists():
                row["agrees_with_igraph"] = bool(np.array_equal(np.load(gdir / f"idom-{lib}.npy"), np.load(gdir / "idom-igraph.npy")))
        rows[lib] = row
    if (gdir / "idom-igraph.npy").exists():
        meta["dominator_tree"] = describe(np.load(gdir / "idom-igraph.npy"), int(meta["root"]))
    return {"graph": meta, "libs": rows}


def _killed(r: dict[str, Any]) -> str:
    why = "over the RSS limit" if r.get("over_max_rss") else f"at the {r['cap_s']:.0f} s cap"
    phase = f"graph built in {r['built_s']:.0f} s, dominators unfinished" if r.get("built_s") is not None else "graph unfinished"
    return f"killed {why} after {r['killed_after_s']:.0f} s ({phase}), peak RSS {r['peak_rss'] / 2**20:,.0f} MiB"


def _brief(r: dict[str, Any]) -> str:
    if r.get("capped"):
        return _killed(r)
    if "error" in r:
        return r["error"].splitlines()[-1] if r["error"] else "failed"
    return (f"import {r['import_s']:.2f} s, build {r['build_s']:.2f} s (CPU {r['build_cpu_s']:.2f}), "
            f"dominators {r['dominator_s']:.2f} s (CPU {r['dominator_cpu_s']:.2f}), "
            f"to numpy {r['to_numpy_s']:.2f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB, load {r['load1']:.1f}")


SIZES_SNIPPET = r"""
import json, os, re, sys
from importlib import metadata
out = {}
for name in sys.argv[1:]:
    todo, seen = [name], []
    while todo:
        d = metadata.distribution(todo.pop())
        if d.metadata["Name"].lower() in [s.lower() for s, _ in seen] or d.metadata["Name"].lower() == "numpy":
            continue
        size = sum(os.path.getsize(f.locate()) for f in (d.files or []) if os.path.isfile(f.locate()))
        seen.append((d.metadata["Name"], {"version": d.version, "installed_bytes": size}))
        for req in d.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    out[name] = dict(seen)
print(json.dumps(out))
"""


def install_sizes(py: Path, libs: list[str], wheels: bool) -> dict[str, Any]:
    got = subprocess.run([str(py), "-c", SIZES_SNIPPET, *[PACKAGES[lib] for lib in libs]], capture_output=True, text=True,
                         timeout=120, check=True)
    sizes: dict[str, Any] = json.loads(got.stdout)
    if wheels:
        for dists in sizes.values():
            for name, d in dists.items():
                with tempfile.TemporaryDirectory() as dl:
                    r = subprocess.run([str(py), "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", dl,
                                        f"{name}=={d['version']}"], capture_output=True, text=True, timeout=600)
                    files = list(Path(dl).iterdir())
                    if r.returncode == 0 and files:
                        d["wheel"] = files[0].name
                        d["wheel_bytes"] = files[0].stat().st_size
    return sizes


def table(results: dict[str, Any], sizes: dict[str, Any]) -> str:
    mib = 2**20
    lines = ["| graph | library | build s (CPU s) | dominators s (CPU s) | to numpy s | peak RSS MiB (arrays loaded) | idom = igraph's | load |",
             "|---|---|---|---|---|---|---|---|"]
    for gname, res in results.items():
        g = res["graph"]
        label = f"{gname}: {g['vertices']:,} V, {g['edges']:,} E"
        for lib, row in res["libs"].items():
            if "build_s" not in row:
                last = row["runs"][-1]
                what = _killed(last) if last.get("capped") else last.get("error", "failed").splitlines()[-1]
                lines.append(f"| {label} | {lib} | {what} | | | | | {last['load1']:.1f} |")
                continue
            agree = "(reference)" if lib == "igraph" else ("yes" if row.get("agrees_with_igraph") else "NO")
            lines.append(f"| {label} | {lib} {row['version']} | {row['build_s']:.2f} ({row['build_cpu_s']:.2f}) "
                         f"| {row['dominator_s']:.2f} ({row['dominator_cpu_s']:.2f}) | {row['to_numpy_s']:.2f} "
                         f"| {row['peak_rss'] / mib:,.0f} ({row['rss_arrays'] / mib:,.0f}) | {agree} | {row['load1']:.1f} |")
    if sizes:
        lines += ["", "| library | installed (with its dependencies, numpy aside) | wheels |", "|---|---|---|"]
        for lib, dists in sizes.items():
            inst = sum(d["installed_bytes"] for d in dists.values())
            whl = [d for d in dists.values() if "wheel_bytes" in d]
            names = " + ".join(f"{n} {d['version']}" for n, d in dists.items())
            wtxt = (f"{sum(d['wheel_bytes'] for d in whl) / mib:.1f} MiB (" + ", ".join(d["wheel"] for d in whl) + ")") if whl else "-"
            lines.append(f"| {lib} ({names}) | {inst / mib:.1f} MiB | {wtxt} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", nargs=2, metavar=("LIB", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--edges", default="1000000,10000000", help="synthetic graph sizes, in edges (default: %(default)s)")
    p.add_argument("--libs", default=",".join(LIBS), help="libraries to compare, igraph first (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per library and graph (default: %(default)s)")
    p.add_argument("--cap", type=float, default=600.0, help="seconds a library gets per graph before it is killed (default: %(default)s)")
    p.add_argument("--max-rss", type=float, default=8.0, metavar="GIB",
                   help="a library's process is killed past this RSS (default: %(default)s GiB)")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "introspect-bench-dominators"),
                   help="throwaway venv holding the libraries, made on first use (default: %(default)s)")
    p.add_argument("--chains", default="20000,80000", metavar="K,...",
                   help="linked lists this long whose values an index also holds (default: %(default)s; '' for none)")
    p.add_argument("--real-objects", type=int, default=0, metavar="N",
                   help="also a forked snapshot of a real heap of about N objects (default: none)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the real heap (default: this one)")
    p.add_argument("--no-wheels", action="store_true", help="skip downloading the wheels to size them")
    p.add_argument("--results-dir", default=str(REPO / "bench-results"), metavar="DIR")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the worker is killed, the temp files go
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))), flush=True)
        return 0
    libs = [x for x in args.libs.split(",") if x]
    if bad := [x for x in libs if x not in LIBS]:
        p.error(f"unknown libraries {bad}: choose among {', '.join(LIBS)}")
    py = ensure_venv(Path(args.venv), libs)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dominators-") as tmp:
        graphs: list[tuple[str, Any]] = [(f"synthetic {int(e) / 1e6:g}M", lambda d, e=int(e): synthetic(e, args.seed))
                                         for e in args.edges.split(",") if e]
        graphs += [(f"chain {int(c):,}", lambda d, c=int(c): chain(c)) for c in args.chains.split(",") if c]
        if args.real_objects:
            graphs.append((f"real {args.real_objects / 1e6:g}M objects", lambda d: real(args.real_objects, args.python, d)))
        for k, (gname, make) in enumerate(graphs):
            gdir = Path(tmp) / f"g{k}"
            gdir.mkdir()
            t0 = time.perf_counter()
            src, dst, nv, facts = make(gdir)
            np.save(gdir / "src.npy", src)
            np.save(gdir / "dst.npy", dst)
            facts.update(vertices=nv, edges=int(src.shape[0]), root=nv - 1, made_s=round(time.perf_counter() - t0, 2))
            (gdir / "graph.json").write_text(json.dumps(facts))
            del src, dst
            print(f"{gname}: {nv:,} vertices, {facts['edges']:,} edges", flush=True)
            results[gname] = measure(py, libs, gdir, args)
            print(f"  dominator tree: {results[gname]['graph'].get('dominator_tree')}", flush=True)
    sizes = install_sizes(py, libs, not args.no_wheels)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(), "repeat": args.repeat,
           "cap_s": args.cap, "results": results, "install": sizes}
    print()
    print(table(results, sizes))
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    path = Path(args.results_dir) / f"bench-dominators-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
