// Loads two .heapsnapshot files, OLD then NEW, into Chromium's own DevTools (the frontend the
// browser serves on its remote-debugging port), selects NEW, chooses Summary's filter "Objects
// allocated between OLD and NEW" and screenshots what it lists (docs/dumps.md: export --since).
// Usage: node screenshot_devtools_between.js OLD.heapsnapshot NEW.heapsnapshot OUT.png
// Env: CHROMIUM (default /usr/bin/chromium); NODE_PATH where playwright-core is installed
// (.node-deps/screenshot/node_modules, installed by scripts/screenshot-devtools). Prints JSON: the
// filter's options, the Summary rows (class, count, distance, sizes) under the filter and, when it
// lists dicts, the Retainers of the first one. Writes the picture even when the Summary is empty
// (that is an answer too).
"use strict";
const { inMemoryPanel } = require("./devtools_memory");

const ROW = "tr.data-grid-data-grid-node:visible";

const [oldFile, newFile, out] = process.argv.slice(2);
if (!oldFile || !newFile || !out) {
  process.stderr.write("usage: node screenshot_devtools_between.js OLD NEW OUT.png\n");
  process.exit(2);
}

inMemoryPanel("screenshot_devtools_between", async (page) => {
  // OLD first, then NEW: DevTools orders the snapshots as they were loaded.
  const item = "li.heap-snapshot-sidebar-tree-item";
  for (const [k, file] of [oldFile, newFile].entries()) {
    await page.locator("input[type=file]").first().setInputFiles(file);
    await page.locator(item).nth(k).waitFor({ timeout: 60000 });
    await page.locator(`${item}:not(.wait)`).nth(k).waitFor({ timeout: 120000 });
  }
  await page.locator(item).nth(1).click();
  await page.locator(ROW).first().waitFor({ timeout: 60000 });
  // Summary's filter: a <select> whose options name the snapshots
  const select = page.locator("select").filter({ hasText: "Objects allocated between" }).first();
  const options = await select.locator("option").allInnerTexts();
  const between = options.find((o) => o.startsWith("Objects allocated between"));
  if (!between) throw new Error(`no 'Objects allocated between' in ${JSON.stringify(options)}`);
  await select.selectOption({ label: between });
  await page.waitForTimeout(3000);  // the worker filters, the grid refills (or empties)
  const text = async () => (await page.locator(ROW).allInnerTexts())
    .map((t) => t.replace(/\s+/g, " ").trim());
  const rows = await text();
  // When there are new dicts (the seeds' leak's records), open the group and select the first:
  // the Retainers view shows who holds it.
  let retainers = [];
  const dicts = page.locator(ROW).filter({ hasText: /^dict\s*×/ });
  if (await dicts.count()) {
    await dicts.first().click();
    await page.keyboard.press("ArrowRight");
    await page.locator(ROW).filter({ hasText: /dict\s*@\d+/ }).first()
      .waitFor({ timeout: 30000 });
    await page.keyboard.press("ArrowDown");
    const held = page.locator(ROW, { hasText: "global_data_store" });
    await held.first().waitFor({ timeout: 30000 }).catch(() => {});
    await page.waitForTimeout(500);
    const all = await text();
    const first = all.findIndex((t) => /^\[\d+\] ?in ?list/.test(t));
    retainers = first < 0 ? [] : all.slice(first);
  }
  await page.mouse.move(5, 600);
  await page.screenshot({ path: out });
  process.stdout.write(JSON.stringify({ options, selected: between, rows, retainers }) + "\n");
}).catch((e) => {
  process.stderr.write(`screenshot_devtools_between: ${(e && e.stack) || e}\n`);
  process.exit(1);
});
