// Chromium's own DevTools (the frontend the browser serves on its remote-debugging port) with its
// Memory panel open, for the screenshot scripts (screenshot_devtools.js, _between.js).
// inMemoryPanel(name, work): launches Chromium (CHROMIUM, default /usr/bin/chromium) with a new
// empty profile, opens DevTools on an about:blank page, selects Memory and waits for "Load
// profile"; then awaits work(page). On failure the page is saved as a PNG in the temp directory
// (named after `name`, said on stderr) and the error is thrown again. The browser and its profile
// are always removed.
"use strict";
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function inMemoryPanel(name, work) {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "introspect-devtools-"));
  // No background networking, updates or sync (the browser must not reach out: on a closed
  // network its connections are refused and it stalls).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 620 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           `--remote-debugging-port=${port}`, `--remote-allow-origins=${origin}`],
  });
  let page = null;
  try {
    // The inspected page: any page will do, snapshots are loaded from files.
    const inspected = context.pages()[0] || (await context.newPage());
    await inspected.goto("about:blank");
    const targets = await (await fetch(`${origin}/json/list`)).json();
    const target = targets.find((t) => t.type === "page" && t.url === "about:blank");
    if (!target) throw new Error(`no about:blank target in ${JSON.stringify(targets)}`);
    page = await context.newPage();
    const ws = `127.0.0.1:${port}/devtools/page/${target.id}`;
    await page.goto(`${origin}/devtools/devtools_app.html?ws=${ws}`);
    // Memory → Load profile (its file input).
    await page.locator("[role=tab]", { hasText: "Memory" }).first().click();
    await page.getByText("Load profile").first().waitFor();
    await work(page);
  } catch (e) {
    if (page) {
      const shot = path.join(os.tmpdir(), `${name}-failed-${process.pid}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      process.stderr.write(`${name}: the page when it failed: ${shot}\n`);
    }
    throw e;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

module.exports = { inMemoryPanel };
