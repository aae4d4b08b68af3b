// Opens a .heapsnapshot in Chromium's own DevTools (the frontend the browser serves on its
// remote-debugging port), selects one of the seeds' leaked bytes in the Memory panel's Summary
// (the biggest list, its first dict, that dict's ['data']) and screenshots the Retainers view.
// Usage: node screenshot_devtools.js FILE.heapsnapshot OUT.png
// Env: CHROMIUM (default /usr/bin/chromium); NODE_PATH where playwright-core is installed
// (scripts/screenshot-devtools does both). Prints the Retainers rows it saw as JSON, and exits 1
// when the path to global_data_store in module __main__ is not among them (no PNG written then).
"use strict";
const { inMemoryPanel } = require("./devtools_memory");

const ROW = "tr.data-grid-data-grid-node:visible";  // a row of any of DevTools' data grids

const [file, out] = process.argv.slice(2);
if (!file || !out) {
  process.stderr.write("usage: node screenshot_devtools.js FILE.heapsnapshot OUT.png\n");
  process.exit(2);
}

inMemoryPanel("screenshot_devtools", async (page) => {
  await page.locator("input[type=file]").first().setInputFiles(file);
  // The sidebar item reads "(Loading…)", "(Parsing strings…)", ... and loses class "wait" when
  // done (clicking it before that leaves the view empty).
  const item = "li.heap-snapshot-sidebar-tree-item";
  await page.locator(`${item}:not(.wait)`).first().waitFor({ timeout: 120000 });
  await page.locator(item).first().click();
  const rows = page.locator(ROW);
  await rows.first().waitFor({ timeout: 60000 });
  // Summary: lists and tuples are DevTools' "(array)"; sorted by retained size, the first list is
  // global_data_store. Expand it, then its first dict, and select that dict's ['data'] bytes.
  await rows.filter({ hasText: /^\(array\)/ }).first().click();
  const step = async (keys, wait) => {
    for (const k of keys) await page.keyboard.press(k);
    await page.locator(wait).first().waitFor({ timeout: 30000 });
  };
  await step(["ArrowRight"], `${ROW}:has-text('list[]')`);
  await step(["ArrowDown", "ArrowRight"], `${ROW}:has-text('::dict')`);
  await step(["ArrowDown", "ArrowRight"], `${ROW}:has-text("['data']")`);
  await page.keyboard.press("ArrowDown");
  const sel = page.locator("tr.data-grid-data-grid-node.selected:visible").first();
  const selected = (await sel.innerText()).replace(/\s+/g, " ");
  if (!selected.startsWith("['data']")) {
    throw new Error(`the selected row is not a dict's ['data']: ${selected}`);
  }
  // The Retainers grid fills (and expands the first retaining path) after the selection.
  const header = page.getByText("Retainers", { exact: true }).first();
  const retainers = page.locator(ROW, { hasText: "global_data_store" });
  await retainers.first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(500);
  // Room for the Retainers view: its header is the split's resizer; drag it to the middle.
  const box = await header.boundingBox();
  if (!box) throw new Error("the Retainers header is not visible");
  await page.mouse.move(box.x + 300, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + 300, 430, { steps: 8 });
  await page.mouse.up();
  // Highlight the root end of the path: global_data_store in module __main__.
  await retainers.filter({ hasText: "module __main__" }).first().click();
  await page.mouse.move(5, 600);  // no hover highlight in the picture
  await page.waitForTimeout(500);
  const seen = await page.evaluate(() => {
    // every visible grid row under the "Retainers" header, in order (DevTools uses shadow roots)
    const all = [];
    const walk = (root) => {
      for (const el of root.querySelectorAll("*")) {
        if (el.shadowRoot) walk(el.shadowRoot);
        if (el.matches("tr.data-grid-data-grid-node") && el.offsetParent !== null) all.push(el);
      }
    };
    walk(document);
    return all.map((e) => e.innerText.replace(/\s+/g, " ").trim());
  });
  // The Retainers grid's rows read "EDGE in RETAINER @id ...", the Summary's "EDGE :: NODE ...".
  const first = seen.findIndex((t) => /^\['data'\] ?in ?dict/.test(t));
  const retainerRows = first < 0 ? [] : seen.slice(first);
  const ok = retainerRows.some((t) => t.includes("global_data_store")
                                      && t.includes("module __main__"));
  process.stdout.write(JSON.stringify({ selected, retainers: retainerRows, ok }) + "\n");
  if (!ok) throw new Error("the Retainers view shows no global_data_store in module __main__");
  await page.screenshot({ path: out });
}).catch((e) => {
  process.stderr.write(`screenshot_devtools: ${(e && e.stack) || e}\n`);
  process.exit(1);
});
