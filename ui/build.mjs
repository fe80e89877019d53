// Builds the UI into ../api/static: app.js (TypeScript and the bundled libraries, minified), app.css
// (minified) and index.html (copied). The output depends only on the sources and the locked packages,
// so a rebuild of unchanged sources gives the same bytes (tests/api/test_ui_bundle.py checks the
// committed files are the build of ui/src).
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "..", "api", "static");
const common = { bundle: true, minify: true, legalComments: "none", logLevel: "warning", charset: "utf8" };
await esbuild.build({ ...common, entryPoints: [join(here, "src", "main.ts")], outfile: join(out, "app.js"),
  format: "iife", target: ["es2020"] });
await esbuild.build({ ...common, entryPoints: [join(here, "src", "app.css")], outfile: join(out, "app.css") });
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
