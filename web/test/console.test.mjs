// Drives the web console in a real Chromium against a running gateway: it
// puts a key through the console and sees it listed and shown, changes it
// through the API and sees the live feed update, cuts the browser off the
// network and sees the feed resume from its token without losing the
// change made meanwhile, deletes the key through the console, gets a
// validation error for an empty key, and reads the cluster view. It saves a
// screenshot of each view.
//
//	node web/test/console.test.mjs GATEWAY_URL [SCREENSHOT_DIR]
//
// It uses the system's Chromium (/usr/bin/chromium, or $CHROMIUM) through
// playwright-core and never downloads a browser. It exits 0 when every step
// passed and 1 otherwise. cmd/flux's TestWebConsole runs it against an
// in-process `flux dev`.
import { mkdir, rm } from "node:fs/promises";
import { createConnection, createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const gateway = (process.argv[2] ?? "").replace(/\/$/, "");
if (!gateway.startsWith("http")) {
  console.error("usage: node web/test/console.test.mjs GATEWAY_URL [SCREENSHOT_DIR]");
  process.exit(2);
}
const shots = resolve(process.argv[3] ?? join(dirname(fileURLToPath(import.meta.url)), "screenshots"));
await mkdir(shots, { recursive: true });
await rm(join(shots, "failure.png"), { force: true });

// waitLimit bounds each wait for the page to reach a state; it is how long
// a step may take before the test gives up, not a timing under test.
const waitLimit = 15_000;
const prefix = `console-test-${Date.now().toString(36)}/`;
const key = `${prefix}greeting`;

// The browser reaches the gateway through this proxy, which the test can
// cut: it ends every open connection (the console's Watch stream among
// them) and refuses new ones until it is mended.
const sockets = new Set();
let cut = false;
let cuts = 0;
const proxy = createServer((client) => {
  if (cut) {
    client.destroy();
    return;
  }
  const upstream = createConnection(new URL(gateway).port || 80, new URL(gateway).hostname);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  }
  client.pipe(upstream).pipe(client);
  client.on("close", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
});
await new Promise((ok) => proxy.listen(0, "127.0.0.1", ok));
const consoleURL = `http://127.0.0.1:${proxy.address().port}/ui/`;
function cutNetwork() {
  cut = true;
  cuts++;
  for (const s of sockets) {
    s.destroy();
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, colorScheme: "light" });
const page = await context.newPage();
page.setDefaultTimeout(waitLimit);
const problems = [];
page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
page.on("console", (msg) => {
  // Calls the test cuts off log network errors, and Chromium asks the
  // origin for /favicon.ico whatever the page says; anything else (a script
  // error, a Content-Security-Policy violation) is a bug.
  if (msg.type() === "error" && !(cuts > 0 && /net::ERR_|Failed to fetch|network error/i.test(msg.text())) &&
    !msg.location().url.endsWith("/favicon.ico")) {
    problems.push(`console error: ${msg.text()} (${msg.location().url})`);
  }
});

page.on("response", (res) => {
  if (res.status() >= 400) {
    problems.push(`HTTP ${res.status()} for ${res.request().method()} ${res.url()}`);
  }
});

let step = "start";
async function check(name, fn) {
  step = name;
  await fn();
  console.log(`ok   ${name}`);
}

// api calls the gateway the way any program would: Connect, JSON, POST.
async function api(method, body) {
  const res = await fetch(`${gateway}/flux.kv.v1.KVService/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) {
    throw new Error(`${method}: HTTP ${res.status}: ${text}`);
  }
  return JSON.parse(text);
}
const b64 = (s) => Buffer.from(s).toString("base64");
const rowOf = (tbody, k) => page.locator(`${tbody} tr[data-key="${k}"]`);

try {
  await check("the console loads from the gateway and starts watching", async () => {
    await page.goto(consoleURL);
    await page.locator("#tab-keys[aria-selected=true]").waitFor();
    await page.waitForFunction(() => document.querySelector("#watch-status")?.dataset.state === "live");
  });

  await check("keys written through the API are listed with their revision and TTL", async () => {
    await api("Put", { key: `${prefix}config`, value: b64(JSON.stringify({ replicas: 3, zones: ["a", "b"], debug: false })) });
    await api("Put", { key: `${prefix}session`, value: b64("token-1234"), ttl: "3600s" });
    await api("Put", { key: `${prefix}blob`, value: Buffer.from([0x00, 0xff, 0x10, 0x80, 0x41]).toString("base64") });
    await page.fill("#scan-prefix", prefix);
    await page.click("#scan-form button[type=submit]");
    await rowOf("#key-rows", `${prefix}session`).locator(".countdown").waitFor();
    const listed = await page.locator("#key-rows tr").evaluateAll((rows) => rows.map((r) => r.dataset.key));
    const want = [`${prefix}blob`, `${prefix}config`, `${prefix}session`];
    if (JSON.stringify(listed) !== JSON.stringify(want)) {
      throw new Error(`listed ${JSON.stringify(listed)}, want ${JSON.stringify(want)}`);
    }
  });

  await check("a JSON value is pretty-printed and a binary one shown in hex", async () => {
    await rowOf("#key-rows", `${prefix}config`).click();
    await page.locator("#detail-value.json", { hasText: '"replicas": 3,' }).waitFor();
    await rowOf("#key-rows", `${prefix}blob`).click();
    await page.locator("#detail-value.hex", { hasText: "00 ff 10 80 41" }).waitFor();
  });

  await check("a key put through the console is listed and shown", async () => {
    await page.fill("#put-key", key);
    await page.fill("#put-value", "hello from the browser");
    await page.fill("#put-ttl", "1h");
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: `Put “${key}” at revision` }).waitFor();
    await rowOf("#key-rows", key).waitFor();
    await page.locator("#detail-value.text", { hasText: "hello from the browser" }).waitFor();
    await page.locator("#key-detail .countdown").waitFor();
    await page.screenshot({ path: join(shots, "keys.png") });
  });

  await check("a change made through the API appears in the live feed", async () => {
    await page.click("#tab-watch");
    await rowOf("#feed-rows", key).filter({ hasText: "hello from the browser" }).waitFor();
    await api("Put", { key, value: b64("changed through the API") });
    await rowOf("#feed-rows", key).filter({ hasText: "changed through the API" }).filter({ hasText: "PUT" }).waitFor();
    await page.screenshot({ path: join(shots, "watch.png") });
  });

  await check("after a disconnect the feed resumes from its token, without losing changes", async () => {
    cutNetwork();
    await page.waitForFunction(() => document.querySelector("#watch-status")?.dataset.state === "retrying");
    await api("Put", { key, value: b64("changed while the browser was offline") });
    cut = false;
    await page.locator("#feed-rows tr.marker", { hasText: "reconnected; resumed without gaps" }).waitFor();
    await rowOf("#feed-rows", key).filter({ hasText: "changed while the browser was offline" }).waitFor();
    await page.waitForFunction(() => document.querySelector("#watch-status")?.dataset.state === "live");
  });

  await check("pausing the feed holds changes back until it resumes", async () => {
    await page.click("#watch-pause");
    await page.waitForFunction(() => document.querySelector("#watch-status")?.dataset.state === "paused");
    await api("Put", { key, value: b64("changed while paused") });
    if (await rowOf("#feed-rows", key).filter({ hasText: "changed while paused" }).count() !== 0) {
      throw new Error("a paused feed showed a change");
    }
    await page.click("#watch-pause");
    await rowOf("#feed-rows", key).filter({ hasText: "changed while paused" }).waitFor();
  });

  await check("a key deleted through the console leaves the list and shows in the feed", async () => {
    await page.click("#tab-keys");
    await rowOf("#key-rows", key).click();
    await page.locator("#detail-value", { hasText: "changed while paused" }).waitFor();
    await page.click("#delete-key");
    await page.click("#confirm-delete");
    await page.locator("#detail-status", { hasText: `Deleted “${key}” at revision` }).waitFor();
    await rowOf("#key-rows", key).waitFor({ state: "detached" });
    const got = await api("Get", { key });
    if (got.found) {
      throw new Error(`the key is still there: ${JSON.stringify(got)}`);
    }
    await page.click("#tab-watch");
    await rowOf("#feed-rows", key).filter({ hasText: "DELETE" }).waitFor();
  });

  await check("an empty key gets the validation error under the key field", async () => {
    await page.click("#tab-keys");
    await page.fill("#put-key", "");
    await page.fill("#put-value", "x");
    await page.fill("#put-ttl", "");
    await page.selectOption("#put-condition", "");
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: "invalid_argument" }).waitFor();
    await page.locator('.field-error[data-field="key"]', { hasText: "at least 1" }).waitFor();
    await page.screenshot({ path: join(shots, "validation.png") });
  });

  await check("the cluster view lists every member, live, with its keys and circuit", async () => {
    await page.click("#tab-cluster");
    await page.locator("#members tbody tr").first().waitFor();
    const members = await page.locator("#members tbody tr").evaluateAll((rows) =>
      rows.map((r) => ({ id: r.dataset.node, text: r.textContent ?? "", keys: r.querySelector("td.keys")?.textContent ?? "" })));
    if (members.length < 1) {
      throw new Error("no members listed");
    }
    let keys = 0;
    for (const m of members) {
      if (!m.text.includes("live") || !m.text.includes("closed") || !/^\d+$/.test(m.keys)) {
        throw new Error(`member ${m.id} is not shown live, with a closed circuit and a key count: ${m.text}`);
      }
      keys += Number(m.keys);
    }
    // The three keys written through the API are still there.
    if (keys < 3) {
      throw new Error(`the members hold ${keys} keys in all, want at least 3`);
    }
    await page.locator("#gateways tbody tr").first().waitFor();
    await page.screenshot({ path: join(shots, "cluster.png") });
  });

  if (problems.length) {
    step = "no errors in the page";
    throw new Error(problems.join("\n"));
  }
  await page.click("#tab-keys");
  await rowOf("#key-rows", `${prefix}config`).click();
  await page.locator("#detail-value.json").waitFor();
  await page.screenshot({ path: join(shots, "console.png"), fullPage: true });
  console.log(`screenshots in ${shots}`);
} catch (err) {
  console.error(`FAIL ${step}: ${err.message}`);
  for (const p of problems) {
    console.error(`  ${p}`);
  }
  await page.screenshot({ path: join(shots, "failure.png") }).catch(() => {});
  console.error(`screenshot of the failure: ${join(shots, "failure.png")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  proxy.close();
  cutNetwork();
}
