// How the console shows values, sizes, durations and times, and how it
// reads the values and durations people type. Nothing here touches the
// page, so web/test/format.test.ts runs it under Node.

/** Kind is what a value looks like, and so how the console shows it first. */
export type Kind = "empty" | "json" | "text" | "hex";

/** View is one way to look at a value: the Text / JSON / Hex toggle. */
export type View = "text" | "json" | "hex";

/** Shown is a value as the console displays it. */
export interface Shown {
  kind: Kind;
  text: string;
}

/**
 * binaryChars are characters that make a value binary even when it is
 * valid UTF-8: C0 controls other than tab and line breaks, which a page
 * cannot show, and U+FFFD, which means the value was decoded lossily
 * before it was stored.
 */
const binaryChars = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffd]/;

/**
 * decodeUTF8 is value as a string when it is valid UTF-8, or undefined. A
 * byte order mark is kept (as U+FEFF), so encoding the string again gives
 * back the same bytes.
 */
export function decodeUTF8(value: Uint8Array, partial = false): string | undefined {
  try {
    // A new decoder each time: a streaming decode leaves state behind.
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(value, { stream: partial });
  } catch {
    return undefined;
  }
}

/** asText is value as text when it reads as text (see binaryChars), or undefined. */
export function asText(value: Uint8Array): string | undefined {
  const text = decodeUTF8(value);
  return text === undefined || binaryChars.test(text) ? undefined : text;
}

/**
 * showValue renders a value as JSON, pretty-printed, when it is a JSON
 * object or array; as text when it is text (valid UTF-8 without control
 * characters); otherwise as a hex dump.
 */
export function showValue(value: Uint8Array): Shown {
  if (value.length === 0) {
    return { kind: "empty", text: "" };
  }
  const text = asText(value);
  if (text === undefined) {
    return { kind: "hex", text: hexDump(value) };
  }
  if (/^\s*[[{]/.test(text)) {
    const pretty = prettyJSON(text);
    if (pretty !== undefined) {
      return { kind: "json", text: pretty };
    }
  }
  return { kind: "text", text };
}

/**
 * renderView is value as one view shows it, or undefined when that view
 * does not apply: Text needs valid UTF-8, JSON a JSON document; Hex always
 * applies.
 */
export function renderView(value: Uint8Array, view: View): string | undefined {
  switch (view) {
    case "hex":
      return hexDump(value);
    case "text":
      return decodeUTF8(value);
    case "json": {
      const text = decodeUTF8(value);
      return text === undefined ? undefined : prettyJSON(text);
    }
  }
}

/**
 * editableText is a value as the text a textarea can hold and give back
 * byte for byte, or undefined when it cannot: the value is not text, or it
 * holds a carriage return, which a textarea turns into a line feed.
 */
export function editableText(value: Uint8Array): string | undefined {
  const text = asText(value);
  if (text === undefined || text.includes("\r")) {
    return undefined;
  }
  return equalBytes(new TextEncoder().encode(text), value) ? text : undefined;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** maxJSONDepth bounds nesting, so a hostile value cannot exhaust the stack. */
const maxJSONDepth = 500;

/**
 * prettyJSON re-indents a JSON document by two spaces, or returns undefined
 * when text is not JSON. It works on the text, not on parsed values:
 * numbers and strings stay exactly as written (12345678901234567890, 1.50,
 * "\u00e9"), and repeated keys all stay, in order.
 */
export function prettyJSON(text: string): string | undefined {
  const out: string[] = [];
  let i = 0;
  const n = text.length;

  function space() {
    for (; i < n; i++) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) {
        return;
      }
    }
  }

  function string(): boolean {
    const start = i++;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        out.push(text.slice(start, i));
        return true;
      }
      if (c < 0x20) {
        return false;
      }
      if (c === 0x5c) {
        const e = text[i + 1] ?? "";
        if (e === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
            return false;
          }
          i += 6;
          continue;
        }
        if (e === "" || !'"\\/bfnrt'.includes(e)) {
          return false;
        }
        i += 2;
        continue;
      }
      i++;
    }
    return false;
  }

  const number = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

  function value(depth: number, pad: string): boolean {
    space();
    const c = text[i];
    if (c === "{" || c === "[") {
      if (depth >= maxJSONDepth) {
        return false;
      }
      const close = c === "{" ? "}" : "]";
      i++;
      space();
      if (text[i] === close) {
        i++;
        out.push(c + close);
        return true;
      }
      out.push(c);
      const inner = pad + "  ";
      for (;;) {
        out.push("\n", inner);
        if (c === "{") {
          space();
          if (text[i] !== '"' || !string()) {
            return false;
          }
          space();
          if (text[i] !== ":") {
            return false;
          }
          i++;
          out.push(": ");
        }
        if (!value(depth + 1, inner)) {
          return false;
        }
        space();
        if (text[i] === ",") {
          i++;
          out.push(",");
          continue;
        }
        if (text[i] === close) {
          i++;
          out.push("\n", pad, close);
          return true;
        }
        return false;
      }
    }
    if (c === '"') {
      return string();
    }
    for (const literal of ["true", "false", "null"]) {
      if (text.startsWith(literal, i)) {
        i += literal.length;
        out.push(literal);
        return true;
      }
    }
    number.lastIndex = i;
    const m = number.exec(text);
    if (!m) {
      return false;
    }
    i = number.lastIndex;
    out.push(m[0]);
    return true;
  }

  if (!value(0, "")) {
    return undefined;
  }
  space();
  return i === n ? out.join("") : undefined;
}

/**
 * compactJSON drops the whitespace outside strings. It does not check the
 * syntax, so it also works on the start of a longer document.
 */
export function compactJSON(text: string): string {
  let out = "";
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") {
        out += text[++i] ?? "";
      } else if (c === '"') {
        inString = false;
      }
    } else if (c === '"') {
      inString = true;
      out += c;
    } else if (c !== " " && c !== "\t" && c !== "\n" && c !== "\r") {
      out += c;
    }
  }
  return out;
}

/**
 * preview is a one-line rendering of a value for lists, at most max
 * characters, ending in "…" when it leaves anything out. It looks at the
 * first few hundred bytes only, however large the value.
 */
export function preview(value: Uint8Array, max = 80): string {
  if (value.length === 0) {
    return "";
  }
  const head = value.subarray(0, max * 4);
  const more = head.length < value.length;
  const text = decodeUTF8(head, more);
  if (text === undefined || binaryChars.test(text)) {
    const n = Math.floor((max - 1) / 2);
    return hex(value.subarray(0, n)) + (value.length > n ? "…" : "");
  }
  const line = /^\s*[[{]/.test(text) ? compactJSON(text) : text.replace(/\s+/g, " ");
  if (line.length > max) {
    // Not between the two halves of a surrogate pair.
    const cut = /[\ud800-\udbff]/.test(line[max - 2]) ? max - 2 : max - 1;
    return line.slice(0, cut) + "…";
  }
  return more ? line + "…" : line;
}

/** hex is bytes as lower-case hex digits, without separators. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** hexDump is bytes as lines of offset, 16 hex bytes and their ASCII. */
export function hexDump(bytes: Uint8Array): string {
  const lines: string[] = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const row = bytes.subarray(off, off + 16);
    const hexes = Array.from(row, (b) => b.toString(16).padStart(2, "0"));
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hexes.join(" ").padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

/** Encoding is how the put form reads the value typed into it. */
export type Encoding = "text" | "hex" | "base64";

/** encodeValue turns typed input into bytes, or throws a readable Error. */
export function encodeValue(input: string, encoding: Encoding): Uint8Array {
  switch (encoding) {
    case "text":
      return new TextEncoder().encode(input);
    case "hex": {
      const digits = input.replace(/\s+/g, "");
      if (!/^([0-9a-fA-F]{2})*$/.test(digits)) {
        throw new Error("not hex: use pairs of digits 0-9, a-f");
      }
      return Uint8Array.from(digits.match(/../g) ?? [], (pair) => parseInt(pair, 16));
    }
    case "base64": {
      let binary: string;
      try {
        binary = atob(input.replace(/\s+/g, ""));
      } catch {
        throw new Error("not base64");
      }
      return Uint8Array.from(binary, (c) => c.charCodeAt(0));
    }
  }
}

const nanosPer: Record<string, bigint> = {
  ns: 1n, us: 1_000n, µs: 1_000n, ms: 1_000_000n, s: 1_000_000_000n,
  m: 60_000_000_000n, h: 3_600_000_000_000n, d: 86_400_000_000_000n,
};

/**
 * parseDuration reads "90s", "5m", "1h30m", "250ms", "1.5s" or "2d" (a
 * bare number is seconds) into whole nanoseconds, rounding the rest to the
 * nearest, or throws a readable Error. The arithmetic is exact: "1.005s"
 * is 1005000000.
 */
export function parseDuration(input: string): bigint {
  const s = input.trim();
  if (s === "") {
    throw new Error("empty duration");
  }
  if (/^\d+(\.\d+)?$/.test(s)) {
    return scaled(s, nanosPer.s);
  }
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/y;
  let total = 0n;
  let pos = 0;
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) {
      throw new Error(`"${s}" is not a duration: try 30s, 5m, 1h30m or 2d`);
    }
    total += scaled(m[1], nanosPer[m[2]]);
    pos = re.lastIndex;
  }
  return total;
}

// scaled is the decimal number times unit, rounded half up.
function scaled(decimal: string, unit: bigint): bigint {
  const [whole, frac = ""] = decimal.split(".");
  const den = 10n ** BigInt(frac.length);
  return (BigInt(whole + frac) * unit + den / 2n) / den;
}

/** maxDurationSeconds is the longest google.protobuf.Duration: 10,000 years. */
const maxDurationSeconds = 315_576_000_000n;

/** DurationParts is a google.protobuf.Duration as whole seconds and nanoseconds. */
export interface DurationParts {
  seconds: bigint;
  nanos: number;
}

/**
 * ttlDuration reads the TTL typed into the put form: a duration longer
 * than zero that a google.protobuf.Duration can hold. It throws a readable
 * Error otherwise; how long a TTL may be is the server's rule.
 */
export function ttlDuration(input: string): DurationParts {
  const ns = parseDuration(input);
  if (ns <= 0n) {
    throw new Error("must be at least 1ns; leave it empty for no TTL");
  }
  if (ns > maxDurationSeconds * 1_000_000_000n) {
    throw new Error("too long for a duration (at most 10000 years)");
  }
  return { seconds: ns / 1_000_000_000n, nanos: Number(ns % 1_000_000_000n) };
}

/** formatDuration is a duration for people: "1h 2m", "45s", "350ms". */
export function formatDuration(ms: number): string {
  if (ms < 1000) {
    return `${Math.max(0, Math.round(ms))}ms`;
  }
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const mm = Math.floor(s / 60);
  s -= mm * 60;
  const parts = [d && `${d}d`, hh && `${hh}h`, mm && `${mm}m`, s && `${s}s`].filter(Boolean);
  return parts.slice(0, 2).join(" ");
}

/** formatBytes is a size in bytes for people: "512 B", "1.5 KiB". */
export function formatBytes(n: number): string {
  const steps = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < steps.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${steps[i]}`;
}

/** formatClock is the local time of day of a date, to the second. */
export function formatClock(d: Date): string {
  return d.toLocaleTimeString(undefined, { hour12: false });
}

/** formatAge says how long ago a date was: "3m ago". */
export function formatAge(d: Date, now = Date.now()): string {
  return `${formatDuration(Math.max(0, now - d.getTime()))} ago`;
}
