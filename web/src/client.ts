// The console's clients of the gateway that serves it. The console lives at
// <gateway>/ui/, so the gateway is the parent of the page's directory; it
// speaks gRPC-Web by default, or the Connect protocol (JSON, easy to read
// in the browser's network panel) with ?protocol=connect.
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { ClusterService } from "../../gen/ts/flux/cluster/v1/cluster_pb.js";
import { KVService } from "../../gen/ts/flux/kv/v1/kv_pb.js";

/** baseUrl is the gateway's URL, without a trailing slash. */
export const baseUrl = new URL("../", document.baseURI).href.replace(/\/$/, "");

/** protocol is the wire protocol the console speaks. */
export const protocol: "grpcweb" | "connect" =
  new URLSearchParams(location.search).get("protocol") === "connect" ? "connect" : "grpcweb";

const transport: Transport =
  protocol === "connect" ? createConnectTransport({ baseUrl }) : createGrpcWebTransport({ baseUrl });

/** kv is a client of flux.kv.v1.KVService through the gateway. */
export const kv = createClient(KVService, transport);

/** cluster is a client of the gateway's own flux.cluster.v1.ClusterService. */
export const cluster = createClient(ClusterService, transport);
