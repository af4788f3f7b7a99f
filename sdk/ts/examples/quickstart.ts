// A tour of the Flux-KV API from TypeScript, run with Node against
// `flux dev` (or any gateway or node):
//
//	npx tsx examples/quickstart.ts [endpoint] [connect|grpc|grpcweb]
//
// It writes, reads, scans, watches and deletes keys under "ts-example/",
// and prints one line per step. Against a server started with --auth-file
// it needs a token of scope write in FLUX_TOKEN.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ConditionFailureSchema, KVService, Op } from "../src/index.js";

const baseUrl = process.argv[2] ?? process.env.FLUX_ENDPOINT ?? "http://127.0.0.1:7700";
const protocol = process.argv[3] ?? "connect";

// A server started with --auth-file wants a bearer token on every call.
// The token comes from the environment, not the command line, where other
// users could read it in the process list; an interceptor sends it, on
// unary calls and streams alike.
const token = process.env.FLUX_TOKEN ?? "";
const bearer: Interceptor = (next) => (req) => {
  req.header.set("Authorization", `Bearer ${token}`);
  return next(req);
};

// Every transport speaks HTTP/2; on http:// URLs that is h2c, which the
// gRPC protocol needs. Connect and gRPC-Web also work over HTTP/1.1.
const options = { baseUrl, httpVersion: "2" as const, interceptors: token ? [bearer] : [] };
const transport =
  protocol === "grpc" ? createGrpcTransport(options)
  : protocol === "grpcweb" ? createGrpcWebTransport(options)
  : protocol === "connect" ? createConnectTransport(options)
  : fail(`unknown protocol ${protocol}: want connect, grpc or grpcweb`);

const kv = createClient(KVService, transport);
const text = new TextEncoder();
const decode = (b: Uint8Array) => new TextDecoder().decode(b);
const prefix = "ts-example/";

function fail(why: string): never {
  console.error(why);
  process.exit(2);
}

async function main() {
  // Put with a TTL; the response carries the write's revision.
  const put = await kv.put({
    key: `${prefix}greeting`,
    value: text.encode("hello"),
    ttl: durationFromMs(60_000),
  });
  console.log(`put ${prefix}greeting revision>0=${put.revision > 0n}`);

  // Get returns the value, its revision and the TTL left.
  const got = await kv.get({ key: `${prefix}greeting` });
  console.log(`get ${prefix}greeting found=${got.found} value=${decode(got.value)} ttl<=60s=${(got.ttl?.seconds ?? 0n) <= 60n}`);

  // A failed condition is FAILED_PRECONDITION with a ConditionFailure detail.
  try {
    await kv.put({
      key: `${prefix}greeting`,
      value: text.encode("again"),
      condition: { case: "ifAbsent", value: true },
    });
    fail("the if_absent put succeeded on an existing key");
  } catch (err) {
    const e = ConnectError.from(err);
    const [detail] = e.findDetails(ConditionFailureSchema);
    console.log(`put if_absent: ${Code[e.code]} (found=${detail?.found} revision matches=${detail?.revision === put.revision})`);
  }

  // Watch the prefix, then write to it: the put arrives as a ChangeEvent.
  const abort = new AbortController();
  const stream = kv.watch({ target: { case: "prefix", value: prefix } }, { signal: abort.signal });
  const events = stream[Symbol.asyncIterator]();
  await events.next(); // the first response confirms the watch
  await kv.put({ key: `${prefix}counter`, value: text.encode("1") });
  for (;;) {
    const { value: res, done } = await events.next();
    if (done) fail("the watch ended early");
    const ev = res.events.find((e) => e.key === `${prefix}counter`);
    if (ev) {
      console.log(`watch: ${Op[ev.op]} ${ev.key}=${decode(ev.value)}`);
      break;
    }
  }
  abort.abort();

  // Scan lists the keys under the prefix in order.
  const page = await kv.scan({ prefix, limit: 10 });
  console.log(`scan ${prefix}: ${page.items.map((kv) => kv.key).join(" ")}`);

  // Batch runs several operations in one call, each with its own result.
  const batch = await kv.batch({
    operations: [
      { op: { case: "delete", value: { key: `${prefix}greeting` } } },
      { op: { case: "delete", value: { key: `${prefix}counter` } } },
    ],
  });
  const deleted = batch.results.filter((r) => r.result.case === "delete" && r.result.value.found).length;
  console.log(`batch delete: ${deleted} deleted`);

  // Validation errors are INVALID_ARGUMENT before anything is written.
  try {
    await kv.put({ key: "", value: text.encode("x") });
    fail("a put with an empty key succeeded");
  } catch (err) {
    console.log(`put empty key: ${Code[ConnectError.from(err).code]}`);
  }
}

main().catch((err) => fail(`error: ${ConnectError.from(err).message}`));
