// The Cluster view: the gateway's ClusterService.Status, refreshed while
// the view is on screen: every member with its liveness, addresses, keys,
// revision, log size and the gateway's circuit breaker for it; the live
// gateways; the answering gateway's circuits.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { CircuitState, type Member, type StatusResponse } from "../../gen/ts/flux/cluster/v1/cluster_pb.js";
import { cluster, onTokenChange } from "./client.js";
import { h, mount } from "./dom.js";
import { describe } from "./errors.js";
import { formatAge, formatBytes } from "./format.js";

/** refreshEvery is how often the view asks again while it is shown. */
const refreshEvery = 3000;
/**
 * statusTimeout bounds one Status call (the gateway gives each node a
 * second, all at once): a gateway that does not answer shows as an error,
 * not as a view that silently stops refreshing.
 */
const statusTimeout = 5000;

export interface ClusterView {
  el: HTMLElement;
  /** shown starts or stops the refreshing. */
  shown(on: boolean): void;
}

export function clusterView(): ClusterView {
  let timer: ReturnType<typeof setInterval> | undefined;
  let inFlight = false;
  const status = h("div", { class: "status", id: "cluster-status", role: "status" });
  const body = h("div", { id: "cluster-body" });

  // refresh asks for the status, unless a call is still out: a slow
  // gateway gets one call at a time, not one more every few seconds.
  async function refresh() {
    if (inFlight) {
      return;
    }
    inFlight = true;
    try {
      render(await cluster.status({}, { timeoutMs: statusTimeout }));
    } catch (err) {
      const p = describe(err);
      status.dataset.kind = "error";
      status.textContent = `${p.summary} (the view shows the last answer)`;
    } finally {
      inFlight = false;
    }
  }

  function render(res: StatusResponse) {
    const live = res.members.filter((m) => m.live).length;
    const at = `Answered by gateway “${res.gatewayId}” at ${new Date().toLocaleTimeString(undefined, { hour12: false })}.`;
    if (res.members.length === 0) {
      status.dataset.kind = "warn";
      status.textContent = `No members: no node has joined the cluster yet. ${at}`;
    } else {
      status.dataset.kind = live === res.members.length ? "ok" : "warn";
      status.textContent = `${res.members.length} ${res.members.length === 1 ? "member" : "members"}, ${live} live` +
        `${res.holdsData ? "; the cluster holds data" : "; the cluster holds no data yet"}. ${at}`;
    }
    mount(body,
      h("h2", null, "Members"),
      h("table", { class: "grid members", id: "members" },
        h("thead", null, h("tr", null,
          ["Node", "Live", "API address", "Admin address", "Keys", "Revision", "Log", "Circuit", "Version", "Started"].map((t, i) =>
            h("th", { class: i >= 4 && i <= 6 ? "num" : null }, t)))),
        h("tbody", null, res.members.map(memberRow))),
      h("h2", null, "Gateways"),
      h("table", { class: "grid gateways", id: "gateways" },
        h("thead", null, h("tr", null, ["Gateway", "API address", "Admin address", "Version", "Started"].map((t) => h("th", null, t)))),
        h("tbody", null, res.gateways.map((g) => h("tr", { "data-gateway": g.id },
          h("td", { class: "mono" }, g.id, g.id === res.gatewayId ? [" ", h("span", { class: "badge" }, "answered")] : null),
          h("td", { class: "mono" }, g.address),
          h("td", { class: "mono" }, g.adminAddress),
          h("td", { class: "mono" }, g.version),
          h("td", null, age(g.startedAt)))))),
      h("h2", null, `Circuit breakers of gateway “${res.gatewayId}”`),
      res.circuits.length === 0
        ? h("p", { class: "muted" }, "No backend called yet.")
        : h("table", { class: "grid circuits", id: "circuits" },
          h("thead", null, h("tr", null, h("th", null, "Service"), h("th", null, "Instance"), h("th", null, "State"))),
          h("tbody", null, res.circuits.map((c) => h("tr", null,
            h("td", { class: "mono" }, c.service), h("td", { class: "mono" }, c.instance), h("td", null, circuit(c.state)))))));
  }

  function memberRow(m: Member) {
    const stats = m.stats;
    const missing = m.live ? h("span", { class: "muted", title: m.statsError }, "?") : "";
    return h("tr", { "data-node": m.id, class: m.live ? null : "down" },
      h("td", { class: "mono" }, m.id),
      h("td", null, h("span", { class: `badge ${m.live ? "live" : "down"}` }, m.live ? "live" : "down")),
      h("td", { class: "mono" }, m.address),
      h("td", { class: "mono" }, m.adminAddress),
      h("td", { class: "num keys" }, stats ? stats.keyCount : missing),
      h("td", { class: "num" }, stats ? stats.revision : missing),
      h("td", { class: "num" }, stats ? (stats.appendOnly ? formatBytes(Number(stats.logBytes)) : "in memory") : missing),
      h("td", null, m.live ? circuit(m.circuit) : ""),
      h("td", { class: "mono" }, m.version),
      h("td", null, age(m.startedAt)));
  }

  onTokenChange(() => timer !== undefined && void refresh());
  return {
    el: h("section", { id: "cluster", class: "view", "aria-label": "Cluster" },
      h("div", { class: "toolbar" }, h("button", { type: "button", id: "cluster-refresh", onclick: () => void refresh() }, "Refresh")),
      status,
      body),
    shown(on: boolean) {
      clearInterval(timer);
      timer = undefined;
      if (on) {
        void refresh();
        timer = setInterval(() => document.visibilityState === "visible" && void refresh(), refreshEvery);
      }
    },
  };
}

function circuit(state: CircuitState): HTMLElement {
  const name = (CircuitState[state] ?? "UNSPECIFIED").toLowerCase().replace("_", "-");
  return h("span", { class: `badge circuit-${name}` }, name === "unspecified" ? "–" : name);
}

function age(t: Timestamp | undefined): HTMLElement | string {
  if (!t) {
    return "";
  }
  const d = timestampDate(t);
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, formatAge(d));
}
