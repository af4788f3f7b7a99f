// The Keys view: browse keys by prefix a page at a time (Scan with its
// cursor), look at one (Get), write one (Put, with a TTL and a condition)
// and delete it.
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { Duration } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { KeyValue, PutRequestSchema } from "../../gen/ts/flux/kv/v1/kv_pb.js";
import { kv, onTokenChange } from "./client.js";
import { h, mount } from "./dom.js";
import { describe, type Problem } from "./errors.js";
import {
  editableText, encodeValue, formatBytes, formatDuration, renderView, showValue, ttlDuration, type Encoding, type View,
} from "./format.js";

/** The fields of the put form, by their path in a PutRequest. */
const putFields = ["key", "value", "ttl", "keep_ttl", "if_revision"] as const;

export function keysView(): HTMLElement {
  // Paging: cursors[i] is the cursor that fetches page i, known for the
  // pages up to the one after the page shown. A page is shown, and its
  // next cursor kept, only once its scan has answered.
  let prefix = "";
  let limit = 50;
  let cursors = [""];
  let page = 0;
  let loading = false;
  let loads = 0; // numbers scans, so a slow answer cannot overwrite a newer one
  let selected: string | undefined;

  const prefixInput = h("input", { id: "scan-prefix", name: "prefix", placeholder: "every key", autocomplete: "off", spellcheck: "false" });
  const limitSelect = h("select", { id: "scan-limit", name: "limit" },
    [25, 50, 100, 500].map((n) => h("option", { value: String(n), selected: n === limit }, n)));
  const scanStatus = h("div", { class: "status", id: "scan-status", role: "status" });
  const rows = h("tbody", { id: "key-rows" });
  const prev = h("button", { type: "button", id: "page-prev", onclick: () => go(page - 1) }, "← Previous");
  const next = h("button", { type: "button", id: "page-next", onclick: () => go(page + 1) }, "Next →");
  const pageLabel = h("span", { class: "page-label", id: "page-label" });
  const detail = h("div", { class: "detail", id: "key-detail" });

  // load shows page `to` (by default the page shown, again). While it
  // loads, the pager is disabled: a second click cannot skip a page or
  // reuse the cursor of the page before.
  async function load(to = page) {
    const n = ++loads;
    loading = true;
    prev.disabled = next.disabled = true;
    scanStatus.dataset.kind = "busy";
    scanStatus.textContent = "Scanning…";
    try {
      const res = await kv.scan({ prefix, limit, cursor: cursors[to], keysOnly: true });
      if (n !== loads) {
        return;
      }
      page = to;
      cursors = cursors.slice(0, page + 1);
      if (res.nextCursor) {
        cursors.push(res.nextCursor);
      }
      mount(rows, res.items.length ? res.items.map(row) : h("tr", null, h("td", { colspan: 3, class: "empty" }, "No keys" + (prefix ? ` under “${prefix}”` : "") + (page ? " on this page." : "."))));
      const where = prefix ? ` under “${prefix}”` : "";
      scanStatus.dataset.kind = "ok";
      scanStatus.textContent = `${res.items.length} ${res.items.length === 1 ? "key" : "keys"}${where} on page ${page + 1}${res.nextCursor ? "; more follow" : ""}.`;
    } catch (err) {
      if (n !== loads) {
        return;
      }
      const p = describe(err);
      p.notes.push(to === page ? "The list below may be out of date." : `The list below is still page ${page + 1}.`);
      showProblem(scanStatus, p);
    }
    loading = false;
    prev.disabled = page === 0;
    next.disabled = page + 1 >= cursors.length;
    pageLabel.textContent = `Page ${page + 1}`;
  }

  function go(to: number) {
    if (loading || to < 0 || to >= cursors.length) {
      return;
    }
    void load(to);
  }

  function scan(e?: Event) {
    e?.preventDefault();
    prefix = prefixInput.value;
    limit = Number(limitSelect.value);
    cursors = [""];
    page = 0;
    rows.replaceChildren();
    void load(0);
  }

  function row(item: KeyValue): HTMLTableRowElement {
    const tr = h("tr", {
      tabindex: 0, "data-key": item.key, class: item.key === selected ? "selected" : null,
      onclick: () => void select(item.key),
      onkeydown: (e: KeyboardEvent) => e.key === "Enter" && void select(item.key),
    },
    h("td", { class: "mono key" }, item.key),
    h("td", { class: "num" }, item.revision),
    h("td", { class: "num" }, ttlCell(item.ttl)));
    return tr;
  }

  async function select(key: string) {
    selected = key;
    for (const tr of rows.querySelectorAll("tr")) {
      tr.classList.toggle("selected", tr.dataset.key === key);
    }
    mount(detail, h("p", { class: "muted" }, "Loading…"));
    try {
      const res = await kv.get({ key });
      if (selected !== key) {
        return;
      }
      if (!res.found) {
        mount(detail, h("h2", { class: "mono detail-key" }, key), h("p", { class: "muted" }, "This key does not exist (any more): it was deleted or it expired."));
        return;
      }
      showKey(key, res.value, res.revision, res.ttl);
    } catch (err) {
      const status = h("div", { class: "status", role: "status" });
      mount(detail, status);
      showProblem(status, describe(err));
    }
  }

  function showKey(key: string, value: Uint8Array, revision: bigint, ttl: Duration | undefined) {
    const shown = showValue(value);
    const status = h("div", { class: "status", id: "detail-status", role: "status" });
    const del = h("button", { type: "button", id: "delete-key", class: "danger", onclick: () => confirmDelete() }, "Delete");
    const actions = h("div", { class: "actions" },
      h("button", { type: "button", id: "edit-key", onclick: () => edit(key, value, revision, ttl !== undefined) }, "Edit"),
      del);
    function confirmDelete() {
      mount(actions,
        h("span", null, "Delete this key?"),
        h("button", { type: "button", id: "confirm-delete", class: "danger", onclick: () => void remove(key, status) }, "Delete"),
        h("button", { type: "button", onclick: () => showKey(key, value, revision, ttl) }, "Cancel"));
    }
    // The Text / JSON / Hex toggle: each view that applies to the value
    // (Text needs UTF-8, JSON a JSON document), the detected one first on.
    const pre = h("pre", { id: "detail-value" });
    const toggles = (["text", "json", "hex"] as const).map((view) =>
      h("button", { type: "button", id: `view-${view}`, "data-view": view, onclick: () => showAs(view) }, viewLabel[view]));
    // Each rendering is made once, when first needed: a value can be large.
    const rendered = new Map<View, string | undefined>([[shown.kind === "empty" ? "text" : shown.kind, shown.text]]);
    const render = (view: View) => {
      if (!rendered.has(view)) {
        rendered.set(view, renderView(value, view));
      }
      return rendered.get(view);
    };
    function showAs(view: View) {
      const text = render(view);
      if (text === undefined) {
        return;
      }
      pre.className = `value ${view}`;
      pre.textContent = text;
      for (const b of toggles) {
        b.setAttribute("aria-pressed", String(b.dataset.view === view));
      }
    }
    for (const b of toggles) {
      // Hex always applies: no need to make it before it is asked for.
      b.disabled = value.length === 0 || (b.dataset.view !== "hex" && render(b.dataset.view as View) === undefined);
    }
    mount(detail,
      h("h2", { class: "mono detail-key" }, key),
      h("dl", { class: "meta" },
        h("dt", null, "Revision"), h("dd", { id: "detail-revision" }, revision),
        h("dt", null, "TTL"), h("dd", null, ttlCell(ttl, "none")),
        h("dt", null, "Value"), h("dd", { id: "detail-kind" }, `${formatBytes(value.length)}, ${kindLabel[shown.kind]}`)),
      h("div", { class: "view-toggle", role: "group", "aria-label": "Show the value as" }, toggles),
      pre,
      actions,
      status);
    if (shown.kind === "empty") {
      pre.className = "value empty";
    } else {
      showAs(shown.kind);
    }
  }

  async function remove(key: string, status: HTMLElement) {
    try {
      const res = await kv.delete({ key });
      selected = undefined;
      mount(detail, h("div", { class: "status", role: "status", "data-kind": "ok", id: "detail-status" },
        res.found ? `Deleted “${key}” at revision ${res.revision}.` : `“${key}” was already gone.`));
      void load();
    } catch (err) {
      showProblem(status, describe(err));
    }
  }

  // The put form.
  const putKey = h("input", { id: "put-key", name: "key", autocomplete: "off", spellcheck: "false" });
  const putValue = h("textarea", { id: "put-value", name: "value", rows: 6, spellcheck: "false" });
  const putEncoding = h("select", { id: "put-encoding", name: "encoding", "aria-label": "Value encoding" },
    h("option", { value: "text" }, "text (UTF-8)"), h("option", { value: "hex" }, "hex"), h("option", { value: "base64" }, "base64"));
  const putTTL = h("input", { id: "put-ttl", name: "ttl", placeholder: "none, or 30s, 5m, 1h30m", autocomplete: "off" });
  const putKeepTTL = h("input", { id: "put-keep-ttl", name: "keep_ttl", type: "checkbox" });
  const putCondition = h("select", { id: "put-condition", name: "condition", onchange: () => syncCondition() },
    h("option", { value: "" }, "none"),
    h("option", { value: "if_absent" }, "only if absent"),
    h("option", { value: "if_present" }, "only if present"),
    h("option", { value: "if_revision" }, "only at revision"));
  const putRevision = h("input", { id: "put-revision", name: "if_revision", inputmode: "numeric", placeholder: "revision", autocomplete: "off" });
  const putStatus = h("div", { class: "status", id: "put-status", role: "status" });
  const errorsOf = new Map(putFields.map((f) => [f, h("div", { class: "field-error", "data-field": f })]));
  const field = (name: (typeof putFields)[number], label: string, ...controls: HTMLElement[]) =>
    h("div", { class: "field" }, h("label", { for: controls[0].id }, label), ...controls, errorsOf.get(name));

  function syncCondition() {
    putRevision.hidden = putCondition.value !== "if_revision";
  }

  // edit copies a key into the put form. The value goes in as text only
  // when the textarea gives back exactly its bytes (no carriage return, no
  // control bytes, a byte order mark kept), and in hex otherwise, so that
  // Edit then Put never changes a byte that was not edited.
  function edit(key: string, value: Uint8Array, revision: bigint, hasTTL: boolean) {
    putKey.value = key;
    const text = editableText(value);
    if (text === undefined) {
      putEncoding.value = "hex";
      putValue.value = Array.from(value, (b) => b.toString(16).padStart(2, "0")).join(" ");
    } else {
      putEncoding.value = "text";
      putValue.value = text;
    }
    putTTL.value = "";
    putKeepTTL.checked = hasTTL;
    // Editing what was read is a compare-and-swap: the write fails if the
    // key changed since.
    putCondition.value = "if_revision";
    putRevision.value = String(revision);
    syncCondition();
    putValue.focus();
  }

  async function put(e: Event) {
    e.preventDefault();
    clearErrors();
    const problem: Problem = { code: "", summary: "", fields: new Map(), notes: [] };
    const req: MessageInitShape<typeof PutRequestSchema> = { key: putKey.value, keepTtl: putKeepTTL.checked };
    try {
      req.value = encodeValue(putValue.value, putEncoding.value as Encoding);
    } catch (err) {
      problem.fields.set("value", [(err as Error).message]);
    }
    if (putTTL.value.trim() !== "") {
      try {
        req.ttl = ttlDuration(putTTL.value);
      } catch (err) {
        problem.fields.set("ttl", [(err as Error).message]);
      }
    }
    switch (putCondition.value) {
      case "if_absent":
        req.condition = { case: "ifAbsent", value: true };
        break;
      case "if_present":
        req.condition = { case: "ifPresent", value: true };
        break;
      case "if_revision":
        if (!/^-?\d+$/.test(putRevision.value.trim())) {
          problem.fields.set("if_revision", ["enter the revision the key must be at"]);
        } else {
          req.condition = { case: "ifRevision", value: BigInt(putRevision.value.trim()) };
        }
    }
    if (problem.fields.size) {
      problem.summary = "Check the fields marked below.";
      showProblem(putStatus, problem);
      return;
    }
    putStatus.dataset.kind = "busy";
    putStatus.textContent = "Writing…";
    try {
      const res = await kv.put(req);
      putStatus.dataset.kind = "ok";
      putStatus.textContent = `Put “${req.key}” at revision ${res.revision}.`;
      void load();
      void select(req.key ?? "");
    } catch (err) {
      showProblem(putStatus, describe(err));
    }
  }

  function clearErrors() {
    for (const el of errorsOf.values()) {
      el.textContent = "";
      el.parentElement?.classList.remove("invalid");
    }
  }

  // showProblem puts an error in a status element and, for the put form,
  // each violation under the field it names.
  function showProblem(status: HTMLElement, p: Problem) {
    const notes = [...p.notes];
    for (const [path, messages] of p.fields) {
      const el = status === putStatus ? errorsOf.get(path as (typeof putFields)[number]) : undefined;
      if (el) {
        el.textContent = messages.join("; ");
        el.parentElement?.classList.add("invalid");
      } else {
        notes.push(`${path}: ${messages.join("; ")}`);
      }
    }
    status.dataset.kind = "error";
    mount(status, h("strong", null, p.summary), notes.length ? h("ul", null, notes.map((n) => h("li", null, n))) : null);
  }

  syncCondition();
  // A new token (or none) may see what the last one could not: ask again.
  onTokenChange(() => {
    void load();
    if (selected !== undefined) {
      void select(selected);
    }
  });
  void load();
  mount(detail, h("p", { class: "muted" }, "Select a key to see its value, revision and TTL."));
  return h("section", { id: "keys", class: "view", "aria-label": "Keys" },
    h("div", { class: "split" },
      h("div", { class: "pane" },
        h("form", { class: "toolbar", id: "scan-form", onsubmit: scan },
          h("label", null, "Prefix ", prefixInput),
          h("label", null, "Page size ", limitSelect),
          h("button", { type: "submit", class: "primary" }, "Scan")),
        scanStatus,
        h("table", { class: "grid keys" },
          h("thead", null, h("tr", null, h("th", null, "Key"), h("th", { class: "num" }, "Revision"), h("th", { class: "num" }, "TTL"))),
          rows),
        h("div", { class: "pager" }, prev, pageLabel, next)),
      h("div", { class: "pane" },
        detail,
        h("form", { class: "put", id: "put-form", novalidate: true, onsubmit: put },
          h("h2", null, "Put a key"),
          field("key", "Key", putKey),
          field("value", "Value", putValue, putEncoding),
          h("div", { class: "row" },
            field("ttl", "TTL", putTTL),
            field("keep_ttl", "Keep TTL", putKeepTTL)),
          field("if_revision", "Condition", putCondition, putRevision),
          h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "put-submit" }, "Put")),
          putStatus))));
}

const kindLabel: Record<string, string> = { empty: "empty", json: "JSON", text: "UTF-8 text", hex: "binary" };
const viewLabel: Record<View, string> = { text: "Text", json: "JSON", hex: "Hex" };

// ttlCell shows the time a key has left, counting down, or fallback when it
// has no TTL. The count starts from the TTL the server reported, so the
// browser's clock does not matter.
function ttlCell(ttl: Duration | undefined, fallback = ""): HTMLElement {
  if (!ttl) {
    return h("span", { class: "muted" }, fallback);
  }
  return h("span", { class: "countdown", "data-deadline": performance.now() + durationMs(ttl) }, formatDuration(durationMs(ttl)));
}

// One ticker updates every countdown on the page.
setInterval(() => {
  const now = performance.now();
  for (const el of document.querySelectorAll<HTMLElement>(".countdown")) {
    const left = Number(el.dataset.deadline) - now;
    el.textContent = left > 0 ? formatDuration(left) : "expired";
    el.classList.toggle("expired", left <= 0);
  }
}, 1000);
