// The Live changes view: a Watch on a prefix, shown as a feed, newest
// first. The watch (follow.ts) keeps the resume_token of every response
// and, when the stream fails, watches again from it, so the feed continues
// without gaps or duplicates.
//
// The view watches only while it is on screen: while another tab is open,
// or the browser hides the page, the stream is closed and the token kept,
// and coming back resumes from it, replaying what happened meanwhile.
// Pausing does the same until Resume.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Op, type ChangeEvent } from "../../gen/ts/flux/cdc/v1/change_event_pb.js";
import { kv, onTokenChange } from "./client.js";
import { h, mount } from "./dom.js";
import { follow, type FollowState } from "./follow.js";
import { formatClock, preview } from "./format.js";

/** maxRows bounds the feed; older rows are dropped. */
const maxRows = 500;

type State = FollowState | "stopped" | "paused" | "suspended";

export interface WatchView {
  el: HTMLElement;
  /** shown says whether the view is the open tab. */
  shown(on: boolean): void;
}

export function watchView(): WatchView {
  let prefix = "";
  let token = ""; // where the feed leaves off: the last token a run handed over
  // want is what the user asked for; the stream runs while it is "watch"
  // and the view is on screen.
  let want: "watch" | "paused" | "stopped" = "watch";
  let started = false; // a watch has been started since the page opened
  let onScreen = false;
  let run: AbortController | undefined;
  let count = 0;

  const prefixInput = h("input", { id: "watch-prefix", name: "prefix", placeholder: "every key", autocomplete: "off", spellcheck: "false" });
  const pauseButton = h("button", { type: "button", id: "watch-pause", onclick: () => (want === "paused" ? resume() : pause()) }, "Pause");
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

  // sync starts or ends the stream to match what the user wants and
  // whether anyone can see the feed.
  function sync() {
    const visible = onScreen && document.visibilityState === "visible";
    if (want === "watch" && visible && !run) {
      if (!started) {
        started = true;
        marker(`watching ${target()}`);
      }
      run = follow(token, {
        watch: (from, signal) => kv.watch({ target: { case: "prefix", value: prefix }, resumeToken: from }, { signal }),
        state: (state, why) => {
          switch (state) {
            case "connecting":
              setState(state, `Connecting: ${target()}…`);
              break;
            case "live":
              setState(state, `Live: ${target()}.`);
              break;
            case "retrying":
              setState(state, why ?? "");
              break;
            case "failed":
              run = undefined;
              want = "stopped";
              setState(state, why ?? "");
          }
        },
        update: (events, next) => {
          token = next;
          for (const ev of events) {
            add(ev);
          }
        },
        marker,
      });
    } else if ((want !== "watch" || !visible) && run) {
      run.abort();
      run = undefined;
    }
    if (want === "watch" && !visible) {
      setState("suspended", `Suspended while the feed is not on screen: ${target()}. It resumes from the last change shown.`);
    }
  }

  function start(e?: Event) {
    e?.preventDefault();
    run?.abort();
    run = undefined;
    prefix = prefixInput.value;
    token = "";
    want = "watch";
    started = false;
    sync();
  }

  function pause() {
    want = "paused";
    sync();
    marker("paused");
    setState("paused", `Paused: ${target()}. Resuming continues from the last change shown.`);
  }

  function resume() {
    want = "watch";
    marker("resumed from the last resume token");
    sync();
  }

  function stop() {
    want = "stopped";
    sync();
    token = "";
    marker("stopped");
    setState("stopped", "Stopped.");
  }

  function add(ev: ChangeEvent) {
    count++;
    counter.textContent = `${count} ${count === 1 ? "change" : "changes"}`;
    const op = Op[ev.op] ?? String(ev.op);
    rows.prepend(h("tr", { class: `op-${op.toLowerCase()}`, "data-key": ev.key, "data-node": ev.nodeId, "data-revision": ev.revision },
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

  // A stream checks its token when it opens: with a new one, a watch that
  // runs, or that failed (for want of a token, most likely), starts again
  // from where the feed left off.
  onTokenChange(() => {
    if (!run && status.dataset.state !== "failed") {
      return;
    }
    run?.abort();
    run = undefined;
    want = "watch";
    marker("token changed; watching again");
    sync();
  });
  document.addEventListener("visibilitychange", sync);
  setState("suspended", "The feed starts when this view is open.");
  return {
    el: h("section", { id: "watch", class: "view", "aria-label": "Live changes" },
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
        rows)),
    shown(on: boolean) {
      onScreen = on;
      sync();
    },
  };
}
