// Reads .heapsnapshot files with v8-heapsnapshot (a maintained reader from npm, not ours) and
// applies Chrome DevTools' "Objects allocated between" filter as devtools-frontend does it:
// HeapSnapshot.ts maxJsNodeId() (a snapshot's maxJSObjectId: its highest odd node id, even ids
// being V8's native objects) and createNodeIdFilter(min, max) (id > min && id <= max), with
// HeapSnapshotView.ts filterSelectIndexChanged: for snapshot i (in load order), min is snapshot
// i-1's maxJSObjectId (0 for the first) and max is snapshot i's; the filter runs on the snapshot
// viewed, here snapshot i.
// Usage: node heapsnapshot_between.js FILE1 FILE2 [FILE3...]   (NODE_PATH: where it is installed)
// Prints JSON: one entry per file, with its maxJSObjectId, the filter's range, how many nodes it
// selects (and per node name, after the first file), whether that selection is exactly the nodes whose id the previous
// file lacks (Comparison's "new"), and the seeds' leak: the bytes reached as module __main__
// -global_data_store-> list -[i]-> dict -['data']-> bytes, inside and outside the range, and
// their ids; for ids in both files, how many nodes changed name (type) between them.
"use strict";
const v8hs = require("v8-heapsnapshot");

const maxJsNodeId = (snap) => {
  let id = 0;
  for (const n of snap.nodes) if (n.id % 2 !== 0 && n.id > id) id = n.id;
  return id;
};

// Is n a bytes at the end of module __main__ -global_data_store-> list -[i]-> dict -['data']->?
const leaked = (n) => n.name === "bytes" && n.in_edges.some((d) => String(d.name) === "['data']"
  && d.from.name === "dict" && d.from.in_edges.some((l) => l.type === "element"
    && l.from.name === "list" && l.from.in_edges.some((m) => String(m.name) === "global_data_store"
      && m.from.name === "module __main__")));

async function main() {
  const files = process.argv.slice(2);
  const out = [];
  let prev = null;
  for (const file of files) {
    const snap = await v8hs.parseSnapshotFromFile(file);
    const max = maxJsNodeId(snap);
    const min = prev ? prev.max : 0;
    const prevIds = prev ? prev.ids : new Map();
    const ids = new Map(snap.nodes.map((n) => [n.id, n.name]));
    let selected = 0, absentBefore = 0, mismatch = 0, renamed = 0, carried = 0;
    const byName = Object.create(null);  // node names such as "constructor" are keys too
    const leak = { inside: 0, outside: 0, ids: [] };
    for (const n of snap.nodes) {
      const inRange = n.id > min && n.id <= max;
      const isNew = !prevIds.has(n.id);
      if (inRange) {
        selected += 1;
        if (prev) byName[n.name] = (byName[n.name] || 0) + 1;
      }
      if (isNew) absentBefore += 1;
      if (prev && inRange !== isNew) mismatch += 1;
      if (!isNew) {
        carried += 1;
        if (prevIds.get(n.id) !== n.name) renamed += 1;
      }
      if (leaked(n)) {
        leak[inRange ? "inside" : "outside"] += 1;
        leak.ids.push(n.id);
      }
    }
    out.push({ file, nodes: snap.nodes.length, distinct_ids: ids.size, max, min, selected,
               absent_before: absentBefore, mismatch, carried, renamed, by_name: byName, leak });
    prev = { max, ids };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(1); });
