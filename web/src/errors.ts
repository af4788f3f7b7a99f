// Errors as the console shows them: the code, the server's message, and
// what the details say (protovalidate's violations by field, a failed
// condition, a compacted watch). A refused token gets a summary that says
// what to do about it.
import { Code, ConnectError } from "@connectrpc/connect";
import { ViolationsSchema, type FieldPath } from "../../gen/ts/buf/validate/validate_pb.js";
import { ConditionFailureSchema, WatchCompactedSchema } from "../../gen/ts/flux/kv/v1/kv_pb.js";

/** Problem is an error taken apart for display. */
export interface Problem {
  /** code is the error code, as Connect spells it: "invalid_argument". */
  code: string;
  /** summary is one line for a status bar. */
  summary: string;
  /** fields maps a request field path ("key", "ttl") to what is wrong with it. */
  fields: Map<string, string[]>;
  /** notes are details that belong to no field. */
  notes: string[];
}

/** describe takes any thrown value apart. */
export function describe(err: unknown): Problem {
  const e = ConnectError.from(err);
  const code = codeName(e.code);
  const fields = new Map<string, string[]>();
  const notes: string[] = [];
  for (const violations of e.findDetails(ViolationsSchema)) {
    for (const v of violations.violations) {
      const path = fieldPath(v.field);
      const message = v.message || v.ruleId;
      if (path === "") {
        notes.push(message);
      } else {
        fields.set(path, [...(fields.get(path) ?? []), message]);
      }
    }
  }
  for (const f of e.findDetails(ConditionFailureSchema)) {
    notes.push(f.found ? `the key exists, at revision ${f.revision}` : "the key does not exist");
  }
  for (const w of e.findDetails(WatchCompactedSchema)) {
    notes.push(`node ${w.nodeId} no longer holds changes before revision ${w.oldestRevision}`);
  }
  const advice = tokenAdvice[e.code];
  if (advice) {
    // The server's message says which: no token, a token it does not
    // know, or the scope the method needs. It never holds the token.
    notes.unshift(`The gateway said: ${e.rawMessage}`);
    return { code, summary: `${code}: ${advice}`, fields, notes };
  }
  return { code, summary: `${code}: ${e.rawMessage}`, fields, notes };
}

/**
 * tokenAdvice is the summary of the codes a gateway started with
 * --auth-file answers when it refuses a call's token (see
 * docs/security.md), for the people who can fix it.
 */
const tokenAdvice: Partial<Record<Code, string>> = {
  [Code.Unauthenticated]: "a valid token is needed. Enter a bearer token in the token field at the top of the page.",
  [Code.PermissionDenied]: "the token's scope is too small for this. Reading needs a read token, writing a write token, " +
    "cluster operations an admin token: enter one with a larger scope in the token field at the top of the page.",
};

/** codeName spells a code as the Connect protocol does. */
export function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase());
}

/** fieldPath renders a violation's field path as "put.key" or "items[2]". */
export function fieldPath(path: FieldPath | undefined): string {
  let out = "";
  for (const el of path?.elements ?? []) {
    if (el.fieldName) {
      out += (out ? "." : "") + el.fieldName;
    }
    switch (el.subscript.case) {
      case "index":
        out += `[${el.subscript.value}]`;
        break;
      case "boolKey":
      case "intKey":
      case "uintKey":
      case "stringKey":
        out += `[${JSON.stringify(String(el.subscript.value))}]`;
        break;
    }
  }
  return out;
}
