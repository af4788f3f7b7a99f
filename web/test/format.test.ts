// Unit tests of web/src/format.ts: how the console reads durations and
// values people type, and how it shows values.
//
//	node --import tsx --test web/test/format.test.ts
//
// web's TestUnit (go test ./web) runs every web/test/*.test.ts this way.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  compactJSON, editableText, encodeValue, parseDuration, preview, prettyJSON, renderView, showValue, ttlDuration,
} from "../src/format.js";

const bytes = (...b: number[]) => Uint8Array.from(b);
const utf8 = (s: string) => new TextEncoder().encode(s);

describe("parseDuration", () => {
  const cases: [string, bigint][] = [
    ["90", 90_000_000_000n],
    ["1.5", 1_500_000_000n],
    ["90s", 90_000_000_000n],
    ["1.005s", 1_005_000_000n],
    ["0.1s", 100_000_000n],
    ["250ms", 250_000_000n],
    ["1.5ms", 1_500_000n],
    ["1ns", 1n],
    ["3us", 3_000n],
    ["3µs", 3_000n],
    ["5m", 300_000_000_000n],
    ["1h30m", 5_400_000_000_000n],
    ["2d", 172_800_000_000_000n],
    ["1h0.5s", 3_600_500_000_000n],
    // Finer than a nanosecond: rounded to the nearest.
    ["1.0000000004s", 1_000_000_000n],
    ["1.0000000005s", 1_000_000_001n],
    [" 30s ", 30_000_000_000n],
    ["0s", 0n],
  ];
  for (const [input, want] of cases) {
    test(JSON.stringify(input), () => assert.equal(parseDuration(input), want));
  }
  for (const bad of ["", "  ", "s", "-5s", "5x", "1e3s", "5 m", "1h 30m", "1.s", ".5s", "5sm"]) {
    test(`rejects ${JSON.stringify(bad)}`, () => assert.throws(() => parseDuration(bad)));
  }
});

describe("ttlDuration", () => {
  test("whole seconds and nanoseconds, never fractions", () => {
    assert.deepEqual(ttlDuration("1.005s"), { seconds: 1n, nanos: 5_000_000 });
    assert.deepEqual(ttlDuration("250ms"), { seconds: 0n, nanos: 250_000_000 });
    assert.deepEqual(ttlDuration("1h"), { seconds: 3600n, nanos: 0 });
    for (const input of ["1.005s", "0.3s", "1.1ms", "123.456789123s"]) {
      const d = ttlDuration(input);
      assert.ok(Number.isInteger(d.nanos) && d.nanos >= 0 && d.nanos < 1e9, `${input}: nanos ${d.nanos}`);
    }
  });
  test("refuses zero and less than a nanosecond", () => {
    assert.throws(() => ttlDuration("0s"), /at least 1ns/);
    assert.throws(() => ttlDuration("0"), /at least 1ns/);
    assert.throws(() => ttlDuration("0.0000000001s"), /at least 1ns/);
  });
  test("refuses what no Duration holds", () => {
    assert.deepEqual(ttlDuration("315576000000s"), { seconds: 315_576_000_000n, nanos: 0 });
    assert.throws(() => ttlDuration("315576000000.000000001s"), /too long/);
    assert.throws(() => ttlDuration("99999999999999999999d"), /too long/);
  });
});

describe("showValue", () => {
  test("empty", () => assert.deepEqual(showValue(bytes()), { kind: "empty", text: "" }));
  test("text", () => assert.deepEqual(showValue(utf8("héllo\tworld\r\n")), { kind: "text", text: "héllo\tworld\r\n" }));
  test("a JSON object or array is pretty-printed", () => {
    assert.deepEqual(showValue(utf8('{"a":1,"b":[true,null]}')), { kind: "json", text: '{\n  "a": 1,\n  "b": [\n    true,\n    null\n  ]\n}' });
    assert.deepEqual(showValue(utf8(" [] ")), { kind: "json", text: "[]" });
  });
  test("a JSON scalar or broken JSON is text", () => {
    assert.equal(showValue(utf8("42")).kind, "text");
    assert.equal(showValue(utf8('"quoted"')).kind, "text");
    assert.equal(showValue(utf8('{"a":1')).kind, "text");
    assert.equal(showValue(utf8("{not json}")).kind, "text");
  });
  test("invalid UTF-8 is hex", () => {
    const shown = showValue(bytes(0x00, 0xff, 0x10, 0x80, 0x41));
    assert.equal(shown.kind, "hex");
    assert.equal(shown.text, "00000000  00 ff 10 80 41" + " ".repeat(33) + "  ....A");
  });
  test("C0 control bytes other than tab and line breaks are hex", () => {
    for (const c of [0x00, 0x01, 0x07, 0x08, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f]) {
      assert.equal(showValue(bytes(0x61, c, 0x62)).kind, "hex", `0x${c.toString(16)}`);
    }
    for (const c of [0x09, 0x0a, 0x0d]) {
      assert.equal(showValue(bytes(0x61, c, 0x62)).kind, "text", `0x${c.toString(16)}`);
    }
  });
  test("U+FFFD is hex: the value was decoded lossily before it was stored", () => {
    assert.equal(showValue(utf8("caf\ufffd")).kind, "hex");
  });
});

describe("prettyJSON", () => {
  test("keeps literals as written", () => {
    assert.equal(prettyJSON('{"n":12345678901234567890,"x":1.50,"e":1E+2,"s":"\\u00e9\\n"}'),
      '{\n  "n": 12345678901234567890,\n  "x": 1.50,\n  "e": 1E+2,\n  "s": "\\u00e9\\n"\n}');
  });
  test("keeps repeated keys, in order", () => {
    assert.equal(prettyJSON('{"a":1,"a":2}'), '{\n  "a": 1,\n  "a": 2\n}');
  });
  test("indents like JSON.stringify where that is lossless", () => {
    const doc = { replicas: 3, zones: ["a", "b"], nested: { deep: [[], {}, [1, [2]]] }, ok: false, none: null, s: "x \"y\"" };
    assert.equal(prettyJSON(JSON.stringify(doc)), JSON.stringify(doc, null, 2));
    assert.equal(prettyJSON(" \n\t{ } "), "{}");
    assert.equal(prettyJSON("42"), "42");
  });
  for (const bad of ["", "{", "}", "[1,]", '{"a":1,}', '{"a"}', "{a:1}", "[01]", "[1.]", "[.5]", "[+1]", "['x']",
    '["\\x"]', '["a\tb"]', "[1] [2]", "[tru]", "nul", '{"a":1}x', '"\\u12"']) {
    test(`rejects ${JSON.stringify(bad)}`, () => assert.equal(prettyJSON(bad), undefined));
  }
  test("refuses nesting too deep rather than exhausting the stack", () => {
    assert.equal(prettyJSON("[".repeat(100_000) + "]".repeat(100_000)), undefined);
    assert.notEqual(prettyJSON("[".repeat(100) + "]".repeat(100)), undefined);
  });
});

describe("views", () => {
  test("text, JSON and hex of a JSON value", () => {
    const v = utf8('{"a":1.50}');
    assert.equal(renderView(v, "text"), '{"a":1.50}');
    assert.equal(renderView(v, "json"), '{\n  "a": 1.50\n}');
    assert.match(renderView(v, "hex") ?? "", /^00000000  7b 22 61 22/);
  });
  test("no text or JSON view of invalid UTF-8", () => {
    assert.equal(renderView(bytes(0xff), "text"), undefined);
    assert.equal(renderView(bytes(0xff), "json"), undefined);
    assert.equal(renderView(utf8("plain"), "json"), undefined);
  });
});

describe("preview", () => {
  test("text on one line", () => assert.equal(preview(utf8("a  b\n\nc")), "a b c"));
  test("JSON compacted", () => assert.equal(preview(utf8('{\n  "a": "x y",\n  "b": [1, 2]\n}')), '{"a":"x y","b":[1,2]}'));
  test("long text shortened, with an ellipsis", () => {
    const p = preview(utf8("x".repeat(200)), 80);
    assert.equal(p, "x".repeat(79) + "…");
  });
  test("binary in hex, with an ellipsis when shortened", () => {
    assert.equal(preview(bytes(0x00, 0xff)), "00ff");
    const p = preview(new Uint8Array(100).fill(0xab), 80);
    assert.equal(p, "ab".repeat(39) + "…");
    assert.ok(p.length <= 80);
  });
  test("a large value: only its start is looked at, and the preview says more follows", () => {
    const big = new Uint8Array(1 << 20).fill(0x61);
    big[1 << 19] = 0x00; // binary far past the start: the preview does not see it
    assert.equal(preview(big, 80), "a".repeat(79) + "…");
  });
  test("a multi-byte character cut at the end of what is looked at is still text", () => {
    const v = utf8("é".repeat(500));
    assert.equal(preview(v, 80), "é".repeat(79) + "…");
  });
  test("short text after much whitespace still says more follows", () => {
    const v = utf8("a" + " ".repeat(400) + "b");
    assert.equal(preview(v, 80), "a …");
  });
});

describe("compactJSON", () => {
  test("keeps whitespace in strings, escapes included", () => {
    assert.equal(compactJSON('{ "a b" : "c \\" d" }'), '{"a b":"c \\" d"}');
  });
  test("works on a cut-off document", () => assert.equal(compactJSON('[ 1, "x y'), '[1,"x y'));
});

describe("encodeValue", () => {
  test("text round trips, byte order mark and all", () => {
    for (const s of ["", "hello", "héllo wörld ✓ 🚀", "\ufeffwith a BOM", "line\nbreaks\ttabs"]) {
      assert.equal(new TextDecoder("utf-8", { ignoreBOM: true }).decode(encodeValue(s, "text")), s);
    }
  });
  test("hex round trips, with or without spaces and in any case", () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const spaced = Array.from(all, (b) => b.toString(16).padStart(2, "0")).join(" ");
    assert.deepEqual(encodeValue(spaced, "hex"), all);
    assert.deepEqual(encodeValue(spaced.replace(/ /g, "").toUpperCase(), "hex"), all);
    assert.deepEqual(encodeValue("", "hex"), bytes());
  });
  test("base64 round trips", () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    assert.deepEqual(encodeValue(Buffer.from(all).toString("base64"), "base64"), all);
    assert.deepEqual(encodeValue("aGk=\n", "base64"), utf8("hi"));
  });
  test("bad input is an error", () => {
    assert.throws(() => encodeValue("abc", "hex"), /not hex/);
    assert.throws(() => encodeValue("zz", "hex"), /not hex/);
    assert.throws(() => encodeValue("!!!", "base64"), /not base64/);
  });
});

describe("editableText", () => {
  test("text that a textarea gives back unchanged", () => {
    for (const s of ["", "hello", "two\nlines\n", "tab\there", "héllo ✓", "\ufeffBOM kept"]) {
      const text = editableText(utf8(s));
      assert.equal(text, s);
      assert.deepEqual(encodeValue(text ?? "", "text"), utf8(s));
    }
  });
  test("not for what a textarea would change or cannot hold", () => {
    for (const v of [utf8("crlf\r\nline"), utf8("cr\ronly"), bytes(0x61, 0x00), bytes(0x1b, 0x5b), bytes(0xff, 0xfe), utf8("\ufffd")]) {
      assert.equal(editableText(v), undefined, JSON.stringify(Array.from(v)));
    }
  });
});
