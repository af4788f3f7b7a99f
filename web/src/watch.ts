// The Live changes view: a Watch on a prefix, shown as a feed, newest
// first. The watch keeps the resume_token of every response it reads;
// when the stream fails it backs off and watches again from that token, so
// the feed continues without gaps or duplicates. Pausing ends the stream
// and keeps the token: resuming replays what happened meanwhile.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Op, type ChangeEvent } from "../../gen/ts/flux/cdc/v1/change_event_pb.js";
import { WatchCompactedSchema } from "../../gen/ts/flux/kv/v1/kv_pb.js";
import { kv } from "./client.js";
import { h, mount } from "./dom.js";
import { describe } from "./errors.js";
import { formatClock, formatDuration, preview } from "./format.js";

/** maxRows bounds the feed; older rows are dropped. */
const maxRows = 500;
/** Reconnection backs off from minDelay to maxDelay, doubling. */
const minDelay = 500;
const maxDelay = 10_000;

type State = "stopped" | "connecting" | "live" | "paused" | "retrying" | "failed";

export function watchView(): HTMLElement {
  let prefix = "";
  let token = "";
  let run: AbortController | undefined;
  let count = 0;

  const prefixInput = h("input", { id: "watch-prefix", name: "prefix", placeholder: "every key", autocomplete: "off", spellcheck: "false" });
  const pauseButton = h("button", { type: "button", id: "watch-pause", onclick: () => (run ? pause() : resume()) }, "Pause");
  const stopButton = h("button", { type: "button", id: "watch-stop", onclick: () => stop() }, "Stop");
  const status = h("div", { class: "status", id: "watch-status", role: "status" });
  const counter = h("span", { class: "muted", id: "watch-count" });
  const rows = h("tbody", { id: "feed-rows" });

  function setState(state: State, text: string) {
    status.dataset.state = state;
    status.dataset.kind = state === "failed" ? "error" : state === "retrying" ? "warn" : "ok";
    mount(status, h("span", { class: "dot" }), text);
    pauseButton.textContent = state === "paused" ? "Resume" : "Pause";
    pauseButton.disabled = state === "stopped" || state === "failed";
    stopButton.disabled = state === "stopped" || state === "failed";
  }

  const target = () => (prefix ? `keys under “${prefix}”` : "every key");

  function start(e?: Event) {
    e?.preventDefault();
    run?.abort();
    prefix = prefixInput.value;
    token = "";
    marker(`watching ${target()}`);
    follow();
  }

  function pause() {
    run?.abort();
    run = undefined;
    marker("paused");
    setState("paused", `Paused: ${target()}. Resuming continues from the last change shown.`);
  }

  function resume() {
    marker("resumed from the last resume token");
    follow();
  }

  function stop() {
    run?.abort();
    run = undefined;
    token = "";
    marker("stopped");
    setState("stopped", "Stopped.");
  }

  // follow watches until aborted, and after a failure watches again from
  // the last token, backing off.
  function follow() {
    const ac = new AbortController();
    run = ac;
    void (async () => {
      let delay = minDelay;
      let failed = false;
      setState("connecting", `Connecting: ${target()}…`);
      while (!ac.signal.aborted) {
        try {
          const stream = kv.watch({ target: { case: "prefix", value: prefix }, resumeToken: token }, { signal: ac.signal });
          for await (const res of stream) {
            token = res.resumeToken;
            if (failed) {
              marker("reconnected; resumed without gaps");
              failed = false;
            }
            delay = minDelay;
            setState("live", `Live: ${target()}.`);
            for (const ev of res.events) {
              add(ev);
            }
          }
          throw new ConnectError("the server ended the stream", Code.Unavailable);
        } catch (err) {
          if (ac.signal.aborted) {
            return;
          }
          const e = ConnectError.from(err);
          const p = describe(e);
          if (e.code === Code.InvalidArgument || e.code === Code.Unimplemented || e.code === Code.PermissionDenied) {
            run = undefined;
            setState("failed", `${p.summary} ${p.notes.join("; ")}`);
            return;
          }
          if (e.code === Code.FailedPrecondition && e.findDetails(WatchCompactedSchema).length > 0) {
            // The history the token points into is gone: start again from
            // the present, and say so, since changes in between are lost.
            token = "";
            marker(`history compacted (${p.notes.join("; ")}): restarting from now; changes in between are not shown`);
          }
          failed = true;
          setState("retrying", `${p.summary}. Watching again in ${formatDuration(delay)}…`);
          await sleep(delay * (0.75 + Math.random() / 2), ac.signal);
          delay = Math.min(delay * 2, maxDelay);
        }
      }
    })();
  }

  function add(ev: ChangeEvent) {
    count++;
    counter.textContent = `${count} ${count === 1 ? "change" : "changes"}`;
    const op = Op[ev.op] ?? String(ev.op);
    rows.prepend(h("tr", { class: `op-${op.toLowerCase()}`, "data-key": ev.key },
      h("td", { class: "mono muted" }, ev.commitTime ? formatClock(timestampDate(ev.commitTime)) : ""),
      h("td", null, h("span", { class: `badge op-${op.toLowerCase()}` }, op)),
      h("td", { class: "mono key" }, ev.key),
      h("td", { class: "mono value" }, ev.op === Op.PUT ? preview(ev.value) : ""),
      h("td", { class: "num" }, ev.revision),
      h("td", { class: "mono" }, ev.nodeId)));
    while (rows.rows.length > maxRows) {
      rows.lastElementChild?.remove();
    }
  }

  function marker(text: string) {
    rows.prepend(h("tr", { class: "marker" }, h("td", { colspan: 6 }, `${formatClock(new Date())} · ${text}`)));
  }

  function clear() {
    count = 0;
    counter.textContent = "";
    rows.replaceChildren();
  }

  setState("stopped", "Stopped.");
  // The feed follows every key from the moment the console opens.
  queueMicrotask(() => start());
  return h("section", { id: "watch", class: "view", "aria-label": "Live changes" },
    h("form", { class: "toolbar", id: "watch-form", onsubmit: start },
      h("label", null, "Prefix ", prefixInput),
      h("button", { type: "submit", class: "primary", id: "watch-start" }, "Watch"),
      pauseButton,
      stopButton,
      h("button", { type: "button", id: "watch-clear", onclick: clear }, "Clear"),
      counter),
    status,
    h("table", { class: "grid feed" },
      h("thead", null, h("tr", null,
        h("th", null, "Time"), h("th", null, "Op"), h("th", null, "Key"), h("th", null, "Value"),
        h("th", { class: "num" }, "Revision"), h("th", null, "Node"))),
      rows));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}
