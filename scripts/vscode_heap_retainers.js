// Reads a .heapsnapshot with @vscode/v8-heap-parser, the parser VS Code's heap snapshot viewer
// loads files with, and walks it as that viewer's table does: the class groups by retained size,
// the largest "(array)" (the seeds' global_data_store), its largest item, that dict's bytes, and
// the bytes' retainers. Usage: node vscode_heap_retainers.js FILE.heapsnapshot (NODE_PATH: where
// the package is installed; scripts/screenshot-devtools does that). Prints JSON; exits 1 unless
// "module __main__" is among the retainers of that bytes.
"use strict";
const fs = require("fs");
const parser = require("@vscode/v8-heap-parser");

const file = process.argv[2];
const graph = parser.decode_bytes(fs.readFileSync(file));
const groups = graph.get_class_groups(0, 100000, false);
const arrays = groups.findIndex((g) => g.name() === "(array)");
if (arrays < 0) throw new Error("no (array) class group");
const byRetained = parser.WasmSortBy.RetainedSize;
const [list] = graph.class_children(arrays, 0, 1, byRetained);
const [dict] = graph.node_children(list.index, 0, 1, byRetained);
const bytes = graph.node_children(dict.index, 0, 10, byRetained).find((n) => n.name() === "bytes");
if (!bytes) throw new Error(`no bytes in ${list.name()} @${list.id} → ${dict.name()} @${dict.id}`);
const retainers = graph.get_all_retainers(bytes.index, 3).map((r) => `${r.name()} @${r.id}`);
const ok = retainers.some((r) => r.startsWith("module __main__ "));
process.stdout.write(JSON.stringify({
  groups: groups.slice(0, 6).map((g) => `${g.name()} ×${g.children_len}`),
  path: [`${list.name()} @${list.id}`, `${dict.name()} @${dict.id}`, `bytes @${bytes.id}`],
  retainers, ok,
}) + "\n");
process.exit(ok ? 0 : 1);
