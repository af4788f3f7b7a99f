// Unit tests of web/src/errors.ts: how the console words the errors it
// shows, here the refusals of a gateway that checks tokens.
//
//	node --import tsx --test web/test/errors.test.ts
//
// web's TestUnit (go test ./web) runs every web/test/*.test.ts this way.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe } from "../src/errors.js";

test("a missing or unknown token: the summary says a valid token is needed, the notes what the gateway said", () => {
  const p = describe(new ConnectError("missing bearer token: send Authorization: Bearer <token>", Code.Unauthenticated));
  assert.equal(p.code, "unauthenticated");
  assert.match(p.summary, /^unauthenticated: a valid token is needed\. Enter a bearer token in the token field/);
  assert.deepEqual(p.notes, ["The gateway said: missing bearer token: send Authorization: Bearer <token>"]);
});

test("a token of too small a scope: the summary says so, the notes name the scope the method needs", () => {
  const p = describe(new ConnectError('token "dash" has scope read; /flux.kv.v1.KVService/Put needs write', Code.PermissionDenied));
  assert.equal(p.code, "permission_denied");
  assert.match(p.summary, /^permission_denied: the token's scope is too small for this\./);
  assert.deepEqual(p.notes, ['The gateway said: token "dash" has scope read; /flux.kv.v1.KVService/Put needs write']);
});

test("other errors keep the server's message as the summary", () => {
  const p = describe(new ConnectError("no such node", Code.NotFound));
  assert.equal(p.summary, "not_found: no such node");
  assert.deepEqual(p.notes, []);
});
