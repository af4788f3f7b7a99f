// The console's clients of the gateway that serves it. The console lives at
// <gateway>/ui/, so the gateway is the parent of the page's directory; it
// speaks gRPC-Web by default, or the Connect protocol (JSON, easy to read
// in the browser's network panel) with ?protocol=connect.
//
// A gateway started with --auth-file wants a bearer token on every call.
// The user gives one in the header's token field (auth.ts) or in a link,
// <gateway>/ui/#token=...; it is kept in sessionStorage, so it ends with
// the tab, and an interceptor sends it as Authorization: Bearer <token>.
import { createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { ClusterService } from "../../gen/ts/flux/cluster/v1/cluster_pb.js";
import { KVService } from "../../gen/ts/flux/kv/v1/kv_pb.js";

/** baseUrl is the gateway's URL, without a trailing slash. */
export const baseUrl = new URL("../", document.baseURI).href.replace(/\/$/, "");

/** protocol is the wire protocol the console speaks. */
export const protocol: "grpcweb" | "connect" =
  new URLSearchParams(location.search).get("protocol") === "connect" ? "connect" : "grpcweb";

/** tokenKey names the token in sessionStorage. */
const tokenKey = "flux.token";

// current is the token calls carry, "" for none. It is kept here too, not
// only in sessionStorage, which a browser may refuse (storage turned off):
// the token then lasts as long as the page.
let current = stored();
const listeners = new Set<() => void>();

function stored(): string {
  try {
    return sessionStorage.getItem(tokenKey) ?? "";
  } catch {
    return "";
  }
}

/** hasToken reports whether calls carry a token; nothing hands the token out. */
export function hasToken(): boolean {
  return current !== "";
}

/**
 * setToken makes the token calls carry ("" for none), for this tab only,
 * and tells the views, which call again with it. Surrounding white space,
 * which copying from a terminal brings along, is dropped.
 */
export function setToken(token: string): void {
  token = token.trim();
  if (token === current) {
    return;
  }
  current = token;
  try {
    if (token) {
      sessionStorage.setItem(tokenKey, token);
    } else {
      sessionStorage.removeItem(tokenKey);
    }
  } catch {
    // Kept in memory only; see current.
  }
  for (const fn of listeners) {
    fn();
  }
}

/** onTokenChange calls fn whenever setToken changes the token. */
export function onTokenChange(fn: () => void): void {
  listeners.add(fn);
}

// takeLinkToken takes a token from the page's fragment, #token=..., which
// a browser never sends to a server, so that a link can carry one. It runs
// once, before any view calls the gateway or reads the fragment (which
// names the open tab), and takes the token out of the address bar and the
// history entry, so it is not bookmarked, shared from the address bar or
// seen over a shoulder. What else the fragment held stays.
function takeLinkToken() {
  const parts = location.hash.replace(/^#/, "").split("&");
  const i = parts.findIndex((p) => p.startsWith("token="));
  if (i < 0) {
    return;
  }
  let token = parts[i].slice("token=".length);
  try {
    token = decodeURIComponent(token);
  } catch {
    // Not percent-encoded after all: taken as it is.
  }
  parts.splice(i, 1);
  const rest = parts.join("&");
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  setToken(token);
}

takeLinkToken();

/**
 * bearer sends the token on every call, unary or streaming, read when the
 * call starts: a new token applies to the next call without a reload.
 */
const bearer: Interceptor = (next) => (req) => {
  if (current) {
    req.header.set("Authorization", `Bearer ${current}`);
  }
  return next(req);
};

const transport: Transport = protocol === "connect"
  ? createConnectTransport({ baseUrl, interceptors: [bearer] })
  : createGrpcWebTransport({ baseUrl, interceptors: [bearer] });

/** kv is a client of flux.kv.v1.KVService through the gateway. */
export const kv = createClient(KVService, transport);

/** cluster is a client of the gateway's own flux.cluster.v1.ClusterService. */
export const cluster = createClient(ClusterService, transport);
