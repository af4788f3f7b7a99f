// Builds the console into dist/: index.html, console.js (the TypeScript in
// src/ and its dependencies, bundled and minified by esbuild) and
// console.css. The output depends only on the sources and the versions
// package-lock.json pins, so CI rebuilds it and checks that dist/, which is
// committed and embedded in the flux binary, matches.
//
//	npm run build --workspace web
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const dir = fileURLToPath(new URL(".", import.meta.url));
const dist = `${dir}dist`;

await rm(dist, { recursive: true, force: true });
await mkdir(dist);
await esbuild.build({
  absWorkingDir: dir,
  entryPoints: ["src/console.ts"],
  outdir: "dist",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome111", "firefox113", "safari16.4"],
  charset: "utf8",
  legalComments: "eof",
  sourcemap: false,
  logLevel: "warning",
});
await copyFile(`${dir}src/index.html`, `${dist}/index.html`);
