"""Reference graphs: DOT always, SVG/PNG through Graphviz's `dot` when it is installed.

The look follows objgraph's show_backrefs: boxes labelled with the type, edges labelled with how
the reference is held; the sampled instances, their direct holder and the roots are coloured.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from introspect.render.output import OutputDir

if TYPE_CHECKING:
    import graphviz

# Beyond this many sampled instances under one holder, the rest are folded into one "+N more" box.
MAX_TARGETS_PER_HOLDER = 4
COLORS = {"target": "#9ecae1", "holder": "#fdae6b", "root": "#a1d99b", "path": "#f0f0f0"}
FORMATS = ("svg", "png", "dot")


def to_dot(graph: dict[str, Any], title: str) -> graphviz.Digraph:
    import graphviz  # 0.05 s: only for a run that writes a graph

    dot = graphviz.Digraph(
        "backrefs", graph_attr={"rankdir": "TB", "label": title, "labelloc": "t", "fontsize": "12"},
        node_attr={"shape": "box", "style": "filled", "fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9"},
    )
    roles = {n["id"]: n.get("role", "path") for n in graph.get("nodes", [])}
    shown: dict[str, int] = {}
    folded: dict[str, int] = {}
    hidden = set()
    for edge in graph.get("edges", []):
        if roles.get(edge["dst"]) == "target":
            shown[edge["src"]] = shown.get(edge["src"], 0) + 1
            if shown[edge["src"]] > MAX_TARGETS_PER_HOLDER:
                folded[edge["src"]] = folded.get(edge["src"], 0) + 1
                hidden.add(edge["dst"])
    for node in graph.get("nodes", []):
        if node["id"] in hidden:
            continue
        dot.node(node["id"], node["label"],
                 fillcolor=COLORS.get(node.get("role", "path"), COLORS["path"]),
                 penwidth="2" if node.get("role") in ("target", "holder") else "1")
    for edge in graph.get("edges", []):
        if edge["dst"] not in hidden:
            dot.edge(edge["src"], edge["dst"], label=edge.get("label") or "")
    for src, n in folded.items():
        dot.node(f"{src}_more", f"+{n} more", shape="plaintext", style="")
        dot.edge(src, f"{src}_more", style="dashed")
    return dot


def write_graph(
    out: OutputDir, stem: str, graph: dict[str, Any], title: str, fmt: str
) -> dict[str, str]:
    """Write ``stem.dot`` and, when `dot` exists, ``stem.<fmt>``; return the paths written."""
    dot = to_dot(graph, title)
    paths = {"dot": str(out.write_text(f"{stem}.dot", dot.source))}
    if fmt != "dot":
        if shutil.which("dot") is None:
            paths["note"] = (
                f"Graphviz `dot` is not installed: only {stem}.dot was written (apt-get install "
                "graphviz)"
            )
        else:
            try:
                data = subprocess.run(["dot", f"-T{fmt}"], input=dot.source.encode(),
                                      capture_output=True, check=True, timeout=60).stdout
                paths[fmt] = str(out.write_bytes(f"{stem}.{fmt}", data))
            except (subprocess.SubprocessError, OSError) as exc:
                paths["note"] = f"dot failed: {exc}"
    return paths


def exists(path: str) -> bool:
    return Path(path).exists()
