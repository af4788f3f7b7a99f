// The Flux-KV web console: a page served by the gateway at /ui/ that talks
// back to it over gRPC-Web with the code generated from proto/. Three
// views, one per tab: Keys, Live changes and Cluster; the header holds the
// bearer token field for gateways that check tokens.
import "./console.css";
import { tokenField } from "./auth.js";
import { baseUrl, protocol } from "./client.js";
import { clusterView } from "./cluster.js";
import { h, mount } from "./dom.js";
import { keysView } from "./keys.js";
import { watchView } from "./watch.js";

const tabs = [
  { id: "keys", label: "Keys" },
  { id: "watch", label: "Live changes" },
  { id: "cluster", label: "Cluster" },
] as const;

const cluster = clusterView();
const watch = watchView();
const views: Record<string, HTMLElement> = { keys: keysView(), watch: watch.el, cluster: cluster.el };
const links = tabs.map((t) => h("a", { href: `#${t.id}`, role: "tab", id: `tab-${t.id}`, "aria-controls": t.id }, t.label));

// show makes the tab named by the URL's fragment the visible one.
function show() {
  const current = tabs.find((t) => `#${t.id}` === location.hash)?.id ?? "keys";
  for (const [id, el] of Object.entries(views)) {
    el.hidden = id !== current;
  }
  for (const a of links) {
    a.setAttribute("aria-selected", String(a.id === `tab-${current}`));
  }
  // Only the open view calls the gateway over and over.
  watch.shown(current === "watch");
  cluster.shown(current === "cluster");
}

mount(document.body,
  h("header", { class: "top" },
    h("div", { class: "brand" }, "Flux-KV", h("span", null, "console")),
    h("nav", { role: "tablist" }, links),
    h("div", { class: "endpoint mono", title: "the gateway this console talks to" },
      baseUrl, " · ", protocol === "connect" ? "Connect" : "gRPC-Web"),
    tokenField()),
  h("main", null, Object.values(views)));
addEventListener("hashchange", show);
show();
