// Reads a .heapsnapshot with v8-heapsnapshot (a maintained reader from npm, not ours) and looks
// for a retainer path, walking each candidate's retainers (in_edges) up to the snapshot's root.
// Usage: node heapsnapshot_paths.js FILE CHAIN_JSON   (NODE_PATH: where the package is installed)
// CHAIN_JSON: [node name, edge name, node name, ..., node name] from the root's child down to the
// retained node; an edge name null matches any edge. Prints JSON: the counts, the number of
// distinct ids, how many of the last nodes have that retainer path, and one path as the reader
// sees it ([[retainer name, retainer type, edge type, edge name], ...]).
"use strict";
const v8hs = require("v8-heapsnapshot");

async function main() {
  const [file, chainJson] = process.argv.slice(2);
  const chain = JSON.parse(chainJson);
  const snap = await v8hs.parseSnapshotFromFile(file);
  const root = snap.nodes[0];
  // retainers of node at chain position k (a node name), walking up: returns a path or null
  const up = (node, k) => {
    if (node.name !== chain[k]) return null;
    if (k === 0) {
      const fromRoot = node.in_edges.find((e) => e.from === root);
      return fromRoot ? [[root.name, root.type, fromRoot.type, String(fromRoot.name)]] : null;
    }
    for (const e of node.in_edges) {
      if (chain[k - 1] !== null && String(e.name) !== chain[k - 1]) continue;
      const above = up(e.from, k - 2);
      if (above) return [...above, [e.from.name, e.from.type, e.type, String(e.name)]];
    }
    return null;
  };
  const last = chain.length - 1;
  let matched = 0;
  let one = null;
  for (const n of snap.nodes) {
    if (n.name !== chain[last]) continue;
    const p = up(n, last);
    if (p) {
      matched += 1;
      one = one || [...p, [n.name, n.type, "", ""]];
    }
  }
  process.stdout.write(JSON.stringify({nodes: snap.nodes.length, edges: snap.edges.length,
                                       ids: new Set(snap.nodes.map((n) => n.id)).size, matched, path: one}) + "\n");
}
main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(1); });
