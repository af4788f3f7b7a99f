// Unit tests of web/src/follow.ts, the console's resumable Watch, driven by
// scripted streams instead of a gateway:
//
//	node --import tsx --test web/test/follow.test.ts
//
// Nothing here waits on a clock: sleeps resolve at once and are recorded.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ChangeEventSchema, Op, type ChangeEvent } from "../../gen/ts/flux/cdc/v1/change_event_pb.js";
import { WatchCompactedSchema } from "../../gen/ts/flux/kv/v1/kv_pb.js";
import { follow, maxDelay, minDelay, type FollowState, type Response } from "../src/follow.js";

const event = (revision: number): ChangeEvent =>
  create(ChangeEventSchema, { nodeId: "node-1", revision: BigInt(revision), op: Op.PUT, key: `k${revision}` });
const response = (token: string, ...revisions: number[]): Response => ({ resumeToken: token, events: revisions.map(event) });

/** end, as a step, ends a stream the way a server does, without an error. */
const end = Symbol("end");

/** A step of a scripted stream: a response, an error that ends it, or end. */
type Step = Response | Error | typeof end;

/**
 * Harness runs follow against streams that play scripts, one per Watch in
 * turn; a stream whose script runs out stays open until aborted, like a
 * live stream with nothing to say.
 */
class Harness {
  opened: string[] = []; // the token of each Watch
  states: [FollowState, string?][] = [];
  updates: [bigint[], string][] = [];
  markers: string[] = [];
  sleeps: number[] = [];
  controller: AbortController;
  onUpdate?: () => void;

  constructor(from: string, scripts: Step[][]) {
    const self = this;
    this.controller = follow(from, {
      watch(token, signal) {
        self.opened.push(token);
        const script = scripts.shift() ?? [];
        return (async function* () {
          for (const step of script) {
            await Promise.resolve();
            if (step === end) {
              return;
            }
            if (step instanceof Error) {
              throw step;
            }
            yield step;
          }
          await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
          throw new ConnectError("aborted", Code.Canceled);
        })();
      },
      state: (state, text) => this.states.push(text === undefined ? [state] : [state, text]),
      update: (events, token) => {
        this.updates.push([events.map((e) => e.revision), token]);
        this.onUpdate?.();
      },
      marker: (text) => this.markers.push(text),
      sleep: async (ms) => {
        this.sleeps.push(ms);
      },
    });
  }

  last(): FollowState | undefined {
    return this.states.at(-1)?.[0];
  }

  /** until lets the follower run until cond holds; it fails rather than hang. */
  async until(what: string, cond: () => boolean) {
    for (let i = 0; i < 10_000 && !cond(); i++) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.ok(cond(), `never: ${what} (states ${JSON.stringify(this.states)}, markers ${JSON.stringify(this.markers)})`);
  }
}

const unavailable = () => new ConnectError("connection lost", Code.Unavailable);

test("after a failure it watches again from the last token, and says it resumed without gaps", async () => {
  const h = new Harness("t0", [
    [response("t1"), response("t2", 1, 2), unavailable()],
    [response("t3", 3)],
  ]);
  await h.until("the second stream's event", () => h.updates.length === 3);
  h.controller.abort();
  assert.deepEqual(h.opened, ["t0", "t2"]);
  assert.deepEqual(h.updates, [[[], "t1"], [[1n, 2n], "t2"], [[3n], "t3"]]);
  assert.deepEqual(h.markers, ["reconnected; resumed without gaps"]);
  assert.deepEqual(h.states.map(([s]) => s), ["connecting", "live", "live", "retrying", "live"]);
});

test("the server ending the stream is a failure like any other: it watches again", async () => {
  const h = new Harness("", [[response("t1"), end], [response("t2", 1)]]);
  await h.until("the second stream", () => h.updates.length === 2);
  h.controller.abort();
  assert.deepEqual(h.opened, ["", "t1"]);
  assert.match(h.states[2][1] ?? "", /^unavailable: the server ended the stream/);
});

test("after abort, responses the transport still delivers are dropped: no events, no token, no state", async () => {
  const states: number[] = [];
  const h: Harness = new Harness("", [[response("t1", 1), response("t2", 2), response("t3", 3), unavailable()]]);
  // Abort from inside the first update, as a Pause click between two
  // buffered responses would.
  h.onUpdate = () => {
    states.push(h.states.length);
    h.controller.abort();
  };
  await h.until("the first update", () => h.updates.length === 1);
  // Let the stream deliver what it still holds.
  for (let i = 0; i < 100; i++) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.deepEqual(h.updates, [[[1n], "t1"]]);
  assert.equal(h.states.length, states[0], `states after abort: ${JSON.stringify(h.states)}`);
  assert.deepEqual(h.opened, [""]);
  assert.deepEqual(h.markers, []);
});

test("Unimplemented (a gateway no node has joined yet) is retried, backing off", async () => {
  const unimplemented = () => new ConnectError("no service serves /flux.kv.v1.KVService/Watch", Code.Unimplemented);
  const h = new Harness("", [[unimplemented()], [unimplemented()], [unimplemented()], [unimplemented()], [unimplemented()],
    [unimplemented()], [unimplemented()], [response("t1")]]);
  await h.until("live", () => h.last() === "live");
  h.controller.abort();
  assert.equal(h.opened.length, 8);
  assert.ok(!h.states.some(([s]) => s === "failed"), JSON.stringify(h.states));
  assert.match(h.states[1][1] ?? "", /^unimplemented: .*no node has joined/);
  // Jittered by a quarter either way, doubling from minDelay up to maxDelay.
  let want = minDelay;
  for (const [i, ms] of h.sleeps.entries()) {
    assert.ok(ms >= want * 0.75 && ms <= want * 1.25, `#${i}: slept ${ms}, want about ${want}`);
    want = Math.min(want * 2, maxDelay);
  }
  assert.equal(h.sleeps.length, 7);
  assert.ok(h.sleeps[6] >= maxDelay * 0.75);
});

test("a request the server refuses is final: no retry", async () => {
  for (const code of [Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated]) {
    const h = new Harness("bad", [[new ConnectError("no", code)], [response("t1")]]);
    await h.until("failed", () => h.last() === "failed");
    assert.deepEqual(h.opened, ["bad"]);
    assert.deepEqual(h.sleeps, []);
  }
});

test("after compaction it watches from now, and does not claim to have resumed without gaps", async () => {
  const compacted = new ConnectError("history compacted", Code.FailedPrecondition, undefined, [
    { desc: WatchCompactedSchema, value: { nodeId: "node-1", oldestRevision: 40n } },
  ]);
  const h = new Harness("old", [[compacted], [response("t1", 41)]]);
  await h.until("live", () => h.last() === "live");
  h.controller.abort();
  assert.deepEqual(h.opened, ["old", ""]);
  assert.equal(h.markers.length, 2, JSON.stringify(h.markers));
  assert.match(h.markers[0], /^history compacted \(node node-1 no longer holds changes before revision 40\): restarting from now/);
  assert.equal(h.markers[1], "reconnected; watching from now");
  assert.ok(!h.markers.some((m) => m.includes("without gaps")));
  // The next failure is an ordinary one again.
  const g = new Harness("old", [[compacted], [response("t1"), unavailable()], [response("t2")]]);
  await g.until("the third stream", () => g.opened.length === 3 && g.last() === "live");
  g.controller.abort();
  assert.deepEqual(g.markers.slice(1), ["reconnected; watching from now", "reconnected; resumed without gaps"]);
  assert.deepEqual(g.opened, ["old", "", "t1"]);
});
