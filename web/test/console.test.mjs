// Drives the web console in a real Chromium against a running gateway, once
// over gRPC-Web (the default) and once with ?protocol=connect: it lists
// keys a page at a time, shows values as JSON, text and hex, puts a key
// through the console, edits values without changing their bytes, follows
// the live feed (which watches only while its view is on screen and the
// page is visible) across a tab switch, a hidden page, a dropped
// connection and a pause without losing or repeating a change, deletes a
// key, shows validation errors under their fields and reads the cluster
// view. A last page, on a fake clock, checks that the cluster view asks
// one Status at a time, with a deadline, and warns when there are no
// members. It saves a screenshot of each view.
//
// With FLUX_TEST_READ_TOKEN and FLUX_TEST_WRITE_TOKEN set, the gateway is
// one that checks tokens (flux dev --auth-file), and the script checks the
// console's token field instead, over both protocols: without a token the
// console says one is needed; with the read token it reads, and a put says
// the token's scope is too small; with the write token, given in the
// field or in a #token= link, it writes; the token lasts for the tab
// only, Forget drops it, and no token ever shows in the page. The tokens
// come from the environment, out of the process list, and the script
// never prints them.
//
//	node web/test/console.test.mjs GATEWAY_URL [SCREENSHOT_DIR]
//
// It uses the system's Chromium (/usr/bin/chromium, or $CHROMIUM) through
// playwright-core and never downloads a browser. It exits 0 when every step
// passed and 1 otherwise; on SIGTERM, Playwright closes the browser before
// the script exits. cmd/flux's TestWebConsole runs it against an
// in-process `flux dev`, and TestWebConsoleTokens against an in-process
// `flux dev --auth-file`.
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
const run = Date.now().toString(36);
const readToken = process.env.FLUX_TEST_READ_TOKEN ?? "";
const writeToken = process.env.FLUX_TEST_WRITE_TOKEN ?? "";

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
  handleSIGTERM: true, // the default, relied on: a SIGTERM closes Chromium too
});
const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, colorScheme: "light" });
const problems = [];

// open opens the console in a new page and watches it for errors and for
// the calls it makes. calls.authorization holds, for each call to the API
// in order, a promise of its Authorization header ("" for none).
async function open(query = "", fragment = "", expectErrors = false) {
  const page = await context.newPage();
  page.setDefaultTimeout(waitLimit);
  // expectErrors is set while a step makes calls that should fail: over
  // the Connect protocol a refused call is an HTTP error, which the
  // browser logs.
  const calls = { watchesStarted: 0, openWatches: new Set(), contentTypes: new Set(), expectErrors, authorization: [] };
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // Calls the test cuts off log network errors, and Chromium asks the
    // origin for /favicon.ico whatever the page says; anything else (a
    // script error, a Content-Security-Policy violation) is a bug.
    if (msg.type() === "error" && !(cuts > 0 && /net::ERR_|Failed to fetch|network error/i.test(msg.text())) &&
      !msg.location().url.endsWith("/favicon.ico") && !(calls.expectErrors && /status of 4\d\d/.test(msg.text()))) {
      problems.push(`console error: ${msg.text()} (${msg.location().url})`);
    }
  });
  page.on("response", (res) => {
    if (res.status() >= 400 && !(calls.expectErrors && res.status() < 500)) {
      problems.push(`HTTP ${res.status()} for ${res.request().method()} ${res.url()}`);
    }
  });
  page.on("request", (req) => {
    if (/\/flux\.(kv|cluster)\.v1\./.test(req.url())) {
      calls.contentTypes.add(req.headers()["content-type"]);
      calls.authorization.push(req.allHeaders().then((h) => h.authorization ?? ""));
    }
    if (req.url().endsWith("/flux.kv.v1.KVService/Watch")) {
      calls.watchesStarted++;
      calls.openWatches.add(req);
    }
  });
  for (const ended of ["requestfinished", "requestfailed"]) {
    page.on(ended, (req) => calls.openWatches.delete(req));
  }
  await page.goto(consoleURL + query + fragment);
  return { page, calls };
}

let step = "start";
let current; // the page of the step, for the failure screenshot
async function check(name, fn) {
  step = name;
  await fn();
  console.log(`ok   ${name}`);
}

// until polls cond, on the test's side, until it holds.
async function until(what, cond) {
  const deadline = Date.now() + waitLimit;
  while (!(await cond())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

// api calls the gateway the way any program would: Connect, JSON, POST,
// with the write token when the gateway checks tokens.
async function api(method, body) {
  const res = await fetch(`${gateway}/flux.kv.v1.KVService/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(writeToken ? { Authorization: `Bearer ${writeToken}` } : {}) },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) {
    throw new Error(`${method}: HTTP ${res.status}: ${text}`);
  }
  return JSON.parse(text);
}
const b64 = (s) => Buffer.from(s).toString("base64");
const equal = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// scenario runs every check of the console against one protocol.
async function scenario(protocol) {
  const tag = `[${protocol}]`;
  const prefix = `console-test-${run}-${protocol}/`;
  const key = `${prefix}greeting`;
  const { page, calls } = await open(protocol === "connect" ? "?protocol=connect" : "");
  current = page;
  const rowOf = (tbody, k) => page.locator(`${tbody} tr[data-key="${k}"]`);
  const state = () => page.locator("#watch-status").getAttribute("data-state");
  const waitState = (want) => page.waitForFunction((want) => document.querySelector("#watch-status")?.dataset.state === want, want);
  const shownOnce = async (text) => {
    const n = await rowOf("#feed-rows", key).filter({ hasText: text }).count();
    if (n !== 1) {
      throw new Error(`the feed shows “${text}” ${n} times, want once`);
    }
  };
  // Every change shows once: no event (node id and revision) twice.
  const noDuplicates = async () => {
    const events = await page.locator("#feed-rows tr[data-revision]").evaluateAll((rows) =>
      rows.map((r) => `${r.dataset.node}/${r.dataset.revision}`));
    const twice = events.filter((e, i) => events.indexOf(e) !== i);
    if (twice.length) {
      throw new Error(`the feed shows these events twice: ${twice.join(", ")}`);
    }
  };
  const keysShown = () => page.locator("#key-rows tr[data-key]").evaluateAll((rows) => rows.map((r) => r.dataset.key));
  const scan = async (p, limit = "50") => {
    await page.fill("#scan-prefix", p);
    await page.selectOption("#scan-limit", limit);
    await page.click("#scan-form button[type=submit]");
  };

  await check(`${tag} the console loads from the gateway; the feed waits for its view`, async () => {
    await page.locator("#tab-keys[aria-selected=true]").waitFor();
    const want = protocol === "connect" ? "Connect" : "gRPC-Web";
    await page.locator("header .endpoint", { hasText: want }).waitFor();
  });

  const crlf = "\ufeffline one\r\nline two\r\n";
  await check(`${tag} keys written through the API are listed with their revision and TTL`, async () => {
    await api("Put", { key: `${prefix}config`, value: b64('{"replicas":3,"zones":["a","b"],"big":12345678901234567890,"ratio":1.50}') });
    await api("Put", { key: `${prefix}session`, value: b64("token-1234"), ttl: "3600s" });
    await api("Put", { key: `${prefix}blob`, value: Buffer.from([0x00, 0xff, 0x10, 0x80, 0x41]).toString("base64") });
    await api("Put", { key: `${prefix}control`, value: b64("a\x1b[0mb") });
    await api("Put", { key: `${prefix}crlf`, value: b64(crlf) });
    await scan(prefix);
    await rowOf("#key-rows", `${prefix}session`).locator(".countdown").waitFor();
    const want = ["blob", "config", "control", "crlf", "session"].map((k) => prefix + k);
    await until("the five keys", async () => equal(await keysShown(), want));
    // The Keys view is open: the Live view has not watched yet.
    if (calls.watchesStarted !== 0 || await state() !== "suspended") {
      throw new Error(`the feed watched before its view was opened (${calls.watchesStarted} calls, state ${await state()})`);
    }
  });

  await check(`${tag} values show as JSON (literals as written), text or hex, and switch between them`, async () => {
    await rowOf("#key-rows", `${prefix}config`).click();
    await page.locator("#detail-value.json", { hasText: '"replicas": 3,' }).waitFor();
    const json = await page.locator("#detail-value").textContent();
    for (const literal of ['"big": 12345678901234567890', '"ratio": 1.50']) {
      if (!json.includes(literal)) {
        throw new Error(`the JSON view lost ${literal}: ${json}`);
      }
    }
    await page.click("#view-hex");
    await page.locator("#detail-value.hex", { hasText: "7b 22 72 65" }).waitFor();
    await page.click("#view-text");
    await page.locator("#detail-value.text", { hasText: '{"replicas":3,"zones"' }).waitFor();
    await page.click("#view-json");
    await page.locator("#detail-value.json", { hasText: '"replicas": 3,' }).waitFor();

    await rowOf("#key-rows", `${prefix}blob`).click();
    await page.locator("#detail-value.hex", { hasText: "00 ff 10 80 41" }).waitFor();
    if (!await page.locator("#view-text").isDisabled() || !await page.locator("#view-json").isDisabled()) {
      throw new Error("a value that is not UTF-8 offers a text or JSON view");
    }
    // Valid UTF-8, but with a control byte: binary.
    await rowOf("#key-rows", `${prefix}control`).click();
    await page.locator("#detail-value.hex", { hasText: "61 1b 5b 30" }).waitFor();
  });

  await check(`${tag} Edit then Put keeps every byte: text when the form can hold it, hex otherwise`, async () => {
    await rowOf("#key-rows", `${prefix}crlf`).click();
    await page.locator("#detail-value.text", { hasText: "line one" }).waitFor();
    await page.click("#edit-key");
    if (await page.inputValue("#put-encoding") !== "hex") {
      throw new Error(`a value with a BOM and CRLF is edited as ${await page.inputValue("#put-encoding")}, want hex`);
    }
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: `Put “${prefix}crlf” at revision` }).waitFor();
    const crlfNow = Buffer.from((await api("Get", { key: `${prefix}crlf` })).value ?? "", "base64");
    if (!crlfNow.equals(Buffer.from(crlf))) {
      throw new Error(`Edit and Put changed the value: ${JSON.stringify(crlfNow.toString())}, was ${JSON.stringify(crlf)}`);
    }
    await rowOf("#key-rows", `${prefix}session`).click();
    await page.locator("#detail-value.text", { hasText: "token-1234" }).waitFor();
    await page.click("#edit-key");
    if (await page.inputValue("#put-encoding") !== "text" || await page.inputValue("#put-value") !== "token-1234") {
      throw new Error("a plain text value is not edited as text");
    }
  });

  await check(`${tag} a key put through the console is listed and shown`, async () => {
    await page.fill("#put-key", key);
    await page.fill("#put-value", "hello from the browser");
    await page.selectOption("#put-encoding", "text");
    await page.fill("#put-ttl", "1h");
    await page.uncheck("#put-keep-ttl");
    await page.selectOption("#put-condition", "");
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: `Put “${key}” at revision` }).waitFor();
    await rowOf("#key-rows", key).waitFor();
    await page.locator("#detail-value.text", { hasText: "hello from the browser" }).waitFor();
    await page.locator("#key-detail .countdown").waitFor();
    if (protocol === "grpcweb") {
      await page.screenshot({ path: join(shots, "keys.png") });
    }
  });

  await check(`${tag} paging: Next and Previous show the right keys, also after a double click and a failed load`, async () => {
    const pageKeys = Array.from({ length: 55 }, (_, i) => `${prefix}page/${String(i).padStart(2, "0")}`);
    await Promise.all(pageKeys.map((k) => api("Put", { key: k, value: b64("p") })));
    const want = (n) => pageKeys.slice(n * 25, n * 25 + 25);
    const onPage = async (n) => {
      await page.locator("#page-label", { hasText: `Page ${n + 1}` }).waitFor();
      await until(`page ${n + 1}`, async () => equal(await keysShown(), want(n)));
      await page.waitForFunction(() => document.querySelector("#scan-status")?.dataset.kind === "ok");
    };
    await scan(`${prefix}page/`, "25");
    await onPage(0);
    // Two clicks in quick succession: the second lands while the first
    // page loads, and must not skip a page or reuse a stale cursor.
    await page.dblclick("#page-next");
    await onPage(1);
    await page.click("#page-next");
    await onPage(2);
    if (!await page.locator("#page-next").isDisabled()) {
      throw new Error("Next is enabled on the last page");
    }
    await page.click("#page-prev");
    await onPage(1);
    await page.click("#page-prev");
    await onPage(0);
    // A load that fails leaves the page shown as it was; Next then asks
    // for the same page again.
    cutNetwork();
    await page.click("#page-next");
    await page.waitForFunction(() => document.querySelector("#scan-status")?.dataset.kind === "error");
    cut = false;
    if (!equal(await keysShown(), want(0)) || await page.locator("#page-label").textContent() !== "Page 1") {
      throw new Error("a failed load changed the page shown");
    }
    await page.click("#page-next");
    await onPage(1);
    await page.click("#page-next");
    await onPage(2);
    await scan(prefix);
    await rowOf("#key-rows", key).waitFor();
  });

  await check(`${tag} the feed starts when its view opens, and shows changes made through the API`, async () => {
    await page.click("#tab-watch");
    await waitState("live");
    await api("Put", { key, value: b64("changed through the API") });
    await rowOf("#feed-rows", key).filter({ hasText: "changed through the API" }).filter({ hasText: "PUT" }).waitFor();
    if (protocol === "grpcweb") {
      await page.screenshot({ path: join(shots, "watch.png") });
    }
  });

  await check(`${tag} on another tab the feed closes its stream, and on return resumes from its token`, async () => {
    await page.click("#tab-keys");
    await waitState("suspended");
    await until("the Watch stream to close", () => calls.openWatches.size === 0);
    await api("Put", { key, value: b64("changed while on another tab") });
    await page.click("#tab-watch");
    await rowOf("#feed-rows", key).filter({ hasText: "changed while on another tab" }).waitFor();
    await waitState("live");
    await shownOnce("changed through the API");
    await shownOnce("changed while on another tab");
    await noDuplicates();
  });

  await check(`${tag} a hidden page closes the stream, and resumes from its token when shown`, async () => {
    const setHidden = (hidden) => page.evaluate((hidden) => {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
    await setHidden(true);
    await waitState("suspended");
    await until("the Watch stream to close", () => calls.openWatches.size === 0);
    await api("Put", { key, value: b64("changed while the page was hidden") });
    await setHidden(false);
    await rowOf("#feed-rows", key).filter({ hasText: "changed while the page was hidden" }).waitFor();
    await waitState("live");
    await shownOnce("changed while the page was hidden");
    await noDuplicates();
  });

  await check(`${tag} after a disconnect the feed resumes from its token, without losing or repeating changes`, async () => {
    cutNetwork();
    await waitState("retrying");
    await api("Put", { key, value: b64("changed while the browser was offline") });
    cut = false;
    await page.locator("#feed-rows tr.marker", { hasText: "reconnected; resumed without gaps" }).waitFor();
    await rowOf("#feed-rows", key).filter({ hasText: "changed while the browser was offline" }).waitFor();
    await waitState("live");
    await shownOnce("changed while the browser was offline");
    await shownOnce("changed through the API");
    await noDuplicates();
  });

  await check(`${tag} a paused feed has no stream, and on resuming shows what it missed, once`, async () => {
    await page.click("#watch-pause");
    await waitState("paused");
    // With no Watch open, no change can reach the feed until it resumes.
    await until("the Watch stream to close", () => calls.openWatches.size === 0);
    await api("Put", { key, value: b64("changed while paused") });
    if (await rowOf("#feed-rows", key).filter({ hasText: "changed while paused" }).count() !== 0) {
      throw new Error("a paused feed showed a change");
    }
    await page.click("#watch-pause");
    await rowOf("#feed-rows", key).filter({ hasText: "changed while paused" }).waitFor();
    await waitState("live");
    await shownOnce("changed while paused");
    await noDuplicates();
  });

  await check(`${tag} a key deleted through the console leaves the list and shows in the feed`, async () => {
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
    await noDuplicates();
  });

  await check(`${tag} bad input gets its error under its field: an empty key, a TTL of zero or not a duration`, async () => {
    await page.click("#tab-keys");
    await page.fill("#put-key", "");
    await page.fill("#put-value", "x");
    await page.selectOption("#put-encoding", "text");
    await page.fill("#put-ttl", "");
    await page.selectOption("#put-condition", "");
    calls.expectErrors = true;
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: "invalid_argument" }).waitFor();
    await page.locator('.field-error[data-field="key"]', { hasText: "at least 1" }).waitFor();
    calls.expectErrors = false;
    if (protocol === "grpcweb") {
      await page.screenshot({ path: join(shots, "validation.png") });
    }
    await page.fill("#put-key", `${prefix.slice(0, -1)}-ttl`);
    for (const [ttl, error] of [["0s", "at least 1ns"], ["soon", "not a duration"]]) {
      await page.fill("#put-ttl", ttl);
      await page.click("#put-submit");
      await page.locator('.field-error[data-field="ttl"]', { hasText: error }).waitFor();
    }
  });

  await check(`${tag} a TTL with a fraction of a second is sent as whole nanoseconds`, async () => {
    // 1.005 s is 1004.9999999999999 ms in floating point: no fractional
    // nanoseconds may reach the encoder. The key is outside the prefix, as
    // it expires at once.
    const ttlKey = `${prefix.slice(0, -1)}-ttl`;
    await page.fill("#put-key", ttlKey);
    await page.fill("#put-ttl", "1.005s");
    await page.click("#put-submit");
    await page.locator("#put-status", { hasText: `Put “${ttlKey}” at revision` }).waitFor();
  });

  await check(`${tag} the cluster view lists every member, live, with its keys and circuit`, async () => {
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
    // The keys written through the API are still there.
    if (keys < 60) {
      throw new Error(`the members hold ${keys} keys in all, want at least 60`);
    }
    await page.locator("#gateways tbody tr").first().waitFor();
    await page.waitForFunction(() => document.querySelector("#cluster-status")?.dataset.kind === "ok");
    if (protocol === "grpcweb") {
      await page.screenshot({ path: join(shots, "cluster.png") });
    }
  });

  await check(`${tag} every call spoke the protocol asked for`, async () => {
    const want = protocol === "connect" ? ["application/json", "application/connect+json"] : ["application/grpc-web+proto"];
    const got = [...calls.contentTypes].sort();
    if (!got.every((t) => want.includes(t))) {
      throw new Error(`content types ${JSON.stringify(got)}, want only ${JSON.stringify(want)}`);
    }
  });

  if (protocol === "grpcweb") {
    await page.click("#tab-keys");
    await page.locator(`#key-rows tr[data-key="${prefix}config"]`).click();
    await page.locator("#detail-value.json").waitFor();
    await page.screenshot({ path: join(shots, "console.png"), fullPage: true });
  }
  await page.close();
}

// tokens checks the console against a gateway that checks tokens, over one
// protocol. A new page is a new tab, with sessionStorage of its own.
async function tokens(protocol) {
  const tag = `[${protocol}, --auth-file]`;
  const query = protocol === "connect" ? "?protocol=connect" : "";
  const prefix = `console-token-test-${run}-${protocol}/`;
  const key = `${prefix}written-by-api`;
  await api("Put", { key, value: b64("written with the write token") });
  // Every refusal over Connect is an HTTP 401 or 403 the browser logs.
  let { page, calls } = await open(query, "", true);
  current = page;
  const waitState = (want) => page.waitForFunction((want) => document.querySelector("#watch-status")?.dataset.state === want, want);
  const tokenState = (text) => page.locator("#token-state", { hasText: text }).waitFor();
  const lastAuthorization = async () => {
    await until("a call to the API", () => calls.authorization.length > 0);
    return calls.authorization.at(-1);
  };
  const useToken = async (token) => {
    await page.fill("#token-input", token);
    await page.click("#token-use");
    await tokenState("Token set");
    if (await page.inputValue("#token-input") !== "") {
      throw new Error("the token field still holds the token once it is in use");
    }
  };
  const scan = async () => {
    await page.fill("#scan-prefix", prefix);
    await page.click("#scan-form button[type=submit]");
  };
  const put = async (k, value) => {
    await page.fill("#put-key", k);
    await page.fill("#put-value", value);
    await page.selectOption("#put-encoding", "text");
    await page.fill("#put-ttl", "");
    await page.selectOption("#put-condition", "");
    await page.click("#put-submit");
  };
  // noTokenShown checks the page's text, markup, form fields, title and
  // address for either token, without bringing the page's text back to
  // the test, whose output must not hold a token either.
  const noTokenShown = async (when) => {
    const shown = await page.evaluate((tokens) => {
      const fields = [...document.querySelectorAll("input, textarea, select")].map((el) => el.value);
      const seen = [document.body.innerText, document.documentElement.outerHTML, document.title, location.href, ...fields];
      return tokens.filter((t) => seen.some((s) => s.includes(t))).length;
    }, [readToken, writeToken]);
    if (shown !== 0 || [readToken, writeToken].some((t) => page.url().includes(t))) {
      throw new Error(`the page shows a token ${when}`);
    }
  };

  await check(`${tag} without a token, the console says a token is needed, and sends none`, async () => {
    await tokenState("No token");
    await page.locator('#scan-status[data-kind="error"]', { hasText: "unauthenticated: a valid token is needed" }).waitFor();
    await page.locator("#scan-status", { hasText: "token field" }).waitFor();
    await page.click("#tab-watch");
    await waitState("failed");
    await page.locator("#watch-status", { hasText: "a valid token is needed" }).waitFor();
    await page.click("#tab-keys");
    const sent = (await Promise.all(calls.authorization)).filter((a) => a !== "");
    if (sent.length) {
      throw new Error(`${sent.length} calls carried an Authorization header without a token`);
    }
    await noTokenShown("without a token");
  });

  await check(`${tag} with a read token, keys can be read, and a put says the token's scope is too small`, async () => {
    await useToken(readToken);
    await scan();
    await page.locator(`#key-rows tr[data-key="${key}"]`).click();
    await page.locator("#detail-value", { hasText: "written with the write token" }).waitFor();
    if (await lastAuthorization() !== `Bearer ${readToken}`) {
      throw new Error("the read was not sent with Authorization: Bearer and the read token");
    }
    // The feed, refused before, watches again with the token (read may watch).
    await page.click("#tab-watch");
    await waitState("live");
    await page.click("#tab-keys");
    await put(`${prefix}by-reader`, "refused");
    await page.locator('#put-status[data-kind="error"]', { hasText: "permission_denied: the token's scope is too small" }).waitFor();
    await page.locator("#put-status", { hasText: "needs write" }).waitFor();
    if ((await api("Get", { key: `${prefix}by-reader` })).found) {
      throw new Error("a put with a read token wrote the key");
    }
    if (protocol === "grpcweb") {
      await page.screenshot({ path: join(shots, "token-scope.png") });
    }
    await noTokenShown("with a read token");
  });

  await check(`${tag} with a write token, keys can be put and read`, async () => {
    await useToken(writeToken);
    await put(`${prefix}by-writer`, "written in the console");
    await page.locator("#put-status", { hasText: `Put “${prefix}by-writer” at revision` }).waitFor();
    await page.locator("#detail-value", { hasText: "written in the console" }).waitFor();
    if (Buffer.from((await api("Get", { key: `${prefix}by-writer` })).value ?? "", "base64").toString() !== "written in the console") {
      throw new Error("the put through the console did not write the key");
    }
    if (await lastAuthorization() !== `Bearer ${writeToken}`) {
      throw new Error("the call was not sent with Authorization: Bearer and the write token");
    }
    await noTokenShown("with a write token");
  });

  await check(`${tag} the token is kept in sessionStorage, for this tab only`, async () => {
    const kept = await page.evaluate((t) => ({
      session: Object.values(sessionStorage).includes(t),
      local: localStorage.length,
    }), writeToken);
    if (!kept.session || kept.local !== 0) {
      throw new Error(`the token is kept in sessionStorage: ${kept.session}; localStorage holds ${kept.local} items, want 0`);
    }
    await page.reload();
    await tokenState("Token set");
    await page.waitForFunction(() => document.querySelector("#scan-status")?.dataset.kind === "ok");
    await page.close();
    ({ page, calls } = await open(query, "", true));
    current = page;
    await tokenState("No token");
    await page.locator('#scan-status[data-kind="error"]', { hasText: "unauthenticated" }).waitFor();
    await page.close();
  });

  await check(`${tag} a #token= link sets the token once and leaves the address bar`, async () => {
    ({ page, calls } = await open(query, `#watch&token=${encodeURIComponent(writeToken)}`, true));
    current = page;
    await tokenState("Token set");
    // The tab the link named stays in the address bar; the token leaves it.
    await until("the token to leave the address bar", () => page.url().endsWith(`/ui/${query}#watch`));
    await page.locator("#tab-watch[aria-selected=true]").waitFor();
    await waitState("live");
    await page.click("#tab-keys");
    await put(`${prefix}by-link`, "written with the link's token");
    await page.locator("#put-status", { hasText: `Put “${prefix}by-link” at revision` }).waitFor();
    await noTokenShown("after a #token= link");
  });

  await check(`${tag} Forget drops the token`, async () => {
    await page.click("#token-forget");
    await tokenState("No token");
    await page.locator('#scan-status[data-kind="error"]', { hasText: "unauthenticated" }).waitFor();
    if (await page.evaluate(() => sessionStorage.length) !== 0) {
      throw new Error("sessionStorage still holds the token after Forget");
    }
    if (await lastAuthorization() !== "") {
      throw new Error("a call after Forget carried an Authorization header");
    }
  });
  await page.close();
}

// clusterPolling checks, on a fake clock and with the gateway's answers
// held back, that the cluster view asks one Status at a time, with a
// deadline, and warns when the cluster has no members.
async function clusterPolling() {
  const page = await context.newPage();
  current = page;
  page.setDefaultTimeout(waitLimit);
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  await page.clock.install();
  // Counts the Status calls the page makes, as it makes them.
  await page.addInitScript(() => {
    const fetch = window.fetch;
    window.statusCalls = 0;
    window.fetch = (input, init) => {
      if (String(input instanceof Request ? input.url : input).endsWith("/flux.cluster.v1.ClusterService/Status")) {
        window.statusCalls++;
      }
      return fetch(input, init);
    };
  });
  const held = [];
  await page.route("**/flux.cluster.v1.ClusterService/Status", (route) => held.push(route));
  await page.goto(`${consoleURL}?protocol=connect#cluster`);
  const answer = (route, msg) => route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(msg) });
  const calls = () => page.evaluate(() => window.statusCalls);

  await check("the cluster view asks for the status with a deadline", async () => {
    await until("the first Status call", () => held.length === 1);
    const timeout = Number(held[0].request().headers()["connect-timeout-ms"]);
    if (!(timeout > 0)) {
      throw new Error(`Status sent without a deadline: headers ${JSON.stringify(held[0].request().headers())}`);
    }
  });

  await check("the cluster view does not ask again while a Status call is out", async () => {
    // A refresh tick passes while the first call is held, within its
    // deadline.
    await page.clock.runFor(4_500);
    if (await calls() !== 1) {
      throw new Error(`${await calls()} Status calls with the first one unanswered; want 1`);
    }
    await answer(held[0], { gatewayId: "gw-fake" });
    await page.locator("#cluster-status", { hasText: "gw-fake" }).waitFor();
    // Answered: the next tick asks again.
    await page.clock.runFor(3_000);
    await until("the next Status call", () => held.length === 2);
    await answer(held[1], { gatewayId: "gw-fake" });
  });

  await check("a Status call that gets no answer ends at its deadline, and the view says so", async () => {
    await page.clock.runFor(3_000);
    await until("the third Status call", () => held.length === 3);
    await page.clock.runFor(5_000);
    await page.locator('#cluster-status[data-kind="error"]', { hasText: "deadline_exceeded" }).waitFor();
    await page.clock.runFor(3_000);
    await until("a Status call after the deadline", () => held.length === 4);
    await answer(held[3], { gatewayId: "gw-fake" });
  });

  await check("a cluster with no members is a warning, not ok", async () => {
    await page.locator('#cluster-status[data-kind="warn"]', { hasText: "No members" }).waitFor();
  });
  await page.close();
}

try {
  if (readToken && writeToken) {
    await tokens("grpcweb");
    await tokens("connect");
  } else {
    await scenario("grpcweb");
    await scenario("connect");
    await clusterPolling();
  }
  if (problems.length) {
    step = "no errors in the page";
    throw new Error(problems.join("\n"));
  }
  console.log(`screenshots in ${shots}`);
} catch (err) {
  console.error(`FAIL ${step}: ${err.message}`);
  for (const p of problems) {
    console.error(`  ${p}`);
  }
  await current?.screenshot({ path: join(shots, "failure.png") }).catch(() => {});
  console.error(`screenshot of the failure: ${join(shots, "failure.png")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  proxy.close();
  cutNetwork();
}
