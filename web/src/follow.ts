// A resumable Watch, apart from the page that shows it (watch.ts), so that
// web/test/follow.test.ts can drive it with scripted streams: it keeps the
// resume_token of every response, and when the stream fails it backs off
// and watches again from that token, so what it reports has neither gaps
// nor duplicates.
import { Code, ConnectError } from "@connectrpc/connect";
import type { ChangeEvent } from "../../gen/ts/flux/cdc/v1/change_event_pb.js";
import { WatchCompactedSchema } from "../../gen/ts/flux/kv/v1/kv_pb.js";
import { describe } from "./errors.js";
import { formatDuration } from "./format.js";

/** Reconnection backs off from minDelay to maxDelay (ms), doubling. */
export const minDelay = 500;
export const maxDelay = 10_000;

/** FollowState is where a run is: "failed" is final, the others pass. */
export type FollowState = "connecting" | "live" | "retrying" | "failed";

/** Response is what follow needs of a WatchResponse. */
export interface Response {
  events: ChangeEvent[];
  resumeToken: string;
}

/**
 * Follower is what follow calls. It calls nothing once its run is aborted,
 * so a caller that aborts one run before it starts the next never hears
 * from the old one again: not its events, its token or its state.
 */
export interface Follower {
  /** watch opens a Watch from token ("" for from now). */
  watch(token: string, signal: AbortSignal): AsyncIterable<Response>;
  /** state reports progress; text says why, for "retrying" and "failed". */
  state(state: FollowState, text?: string): void;
  /** update hands over a response's events and the token that follows them. */
  update(events: ChangeEvent[], token: string): void;
  /** marker notes something that happened to the stream itself. */
  marker(text: string): void;
  /** sleep waits ms, or until signal aborts (default: a timer). */
  sleep?(ms: number, signal: AbortSignal): Promise<void>;
}

/** Codes that watching again cannot fix: the request itself is refused. */
const permanent = new Set([Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated]);

/**
 * follow watches from token until the returned controller is aborted, or
 * a failure that retrying cannot fix. After any other failure it waits
 * (minDelay, doubling up to maxDelay, with jitter) and watches again from
 * the last token, also after Unimplemented: a gateway that no node has
 * registered with yet serves no KVService, and will once one does. If the
 * nodes no longer hold the history the token points into, it starts again
 * from now, and says so.
 */
export function follow(from: string, f: Follower): AbortController {
  const ac = new AbortController();
  const signal = ac.signal;
  const sleep = f.sleep ?? timer;
  void (async () => {
    let token = from;
    let delay = minDelay;
    let broken = false; // a stream failed since the last response
    let gap = false; // changes were lost: the next stream starts from now
    while (!signal.aborted) {
      if (!broken) {
        f.state("connecting");
      }
      try {
        for await (const res of f.watch(token, signal)) {
          // Responses the transport had buffered still arrive after an
          // abort: they belong to a run that is over.
          if (signal.aborted) {
            return;
          }
          token = res.resumeToken;
          if (broken) {
            f.marker(gap ? "reconnected; watching from now" : "reconnected; resumed without gaps");
            broken = false;
            gap = false;
          }
          delay = minDelay;
          f.state("live");
          f.update(res.events, token);
        }
        throw new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        if (signal.aborted) {
          return;
        }
        const e = ConnectError.from(err);
        const p = describe(e);
        if (permanent.has(e.code)) {
          f.state("failed", [p.summary, ...p.notes].join(" "));
          return;
        }
        if (e.code === Code.FailedPrecondition && e.findDetails(WatchCompactedSchema).length > 0) {
          token = "";
          gap = true;
          f.marker(`history compacted (${p.notes.join("; ")}): restarting from now; changes in between are not shown`);
        }
        broken = true;
        const why = e.code === Code.Unimplemented ? `${p.summary} (no node has joined the gateway yet?)` : p.summary;
        f.state("retrying", `${why}. Watching again in ${formatDuration(delay)}…`);
        await sleep(delay * (0.75 + Math.random() / 2), signal);
        delay = Math.min(delay * 2, maxDelay);
      }
    }
  })();
  return ac;
}

function timer(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}
