// How the console shows values, sizes, durations and times, and how it
// reads the values and durations people type.

/** Shown is a value as the console displays it. */
export interface Shown {
  kind: "empty" | "json" | "text" | "hex";
  text: string;
}

const strictUTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * showValue renders a value as JSON, pretty-printed, when it is a JSON
 * object or array; as text when it is valid UTF-8; otherwise as a hex dump.
 */
export function showValue(value: Uint8Array): Shown {
  if (value.length === 0) {
    return { kind: "empty", text: "" };
  }
  let text: string;
  try {
    text = strictUTF8.decode(value);
  } catch {
    return { kind: "hex", text: hexDump(value) };
  }
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try {
      return { kind: "json", text: JSON.stringify(JSON.parse(trimmed), null, 2) };
    } catch {
      // Not JSON after all: show it as the text it is.
    }
  }
  return { kind: "text", text };
}

/** preview is a one-line, shortened rendering of a value for lists. */
export function preview(value: Uint8Array, max = 80): string {
  const shown = showValue(value);
  let text: string;
  switch (shown.kind) {
    case "empty":
      return "";
    case "hex":
      text = hex(value.subarray(0, Math.ceil(max / 2)));
      break;
    case "json":
      text = JSON.stringify(JSON.parse(shown.text));
      break;
    case "text":
      text = shown.text.replace(/\s+/g, " ");
  }
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
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

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * parseDuration reads "90s", "5m", "1h30m", "250ms" or "2d" (a bare number
 * is seconds) into milliseconds, or throws a readable Error.
 */
export function parseDuration(input: string): number {
  const s = input.trim();
  if (s === "") {
    throw new Error("empty duration");
  }
  if (/^\d+(\.\d+)?$/.test(s)) {
    return Number(s) * 1000;
  }
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;
  let total = 0;
  let pos = 0;
  while (pos < s.length) {
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) {
      throw new Error(`"${s}" is not a duration: try 30s, 5m, 1h30m or 2d`);
    }
    total += Number(m[1]) * units[m[2]];
    pos = re.lastIndex;
  }
  return total;
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
