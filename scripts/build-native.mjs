#!/usr/bin/env node
// Builds the optional N-API addon native/build/Release/trustvol_native.node with node-gyp, offline, against the
// headers of the running Node (its bundled OpenSSL headers included). The addon links to no library: the EVP_*
// symbols it calls are exported by the node binary itself.
//   node scripts/build-native.mjs             build; exit 1 with the compiler output on failure
//   node scripts/build-native.mjs --optional  (the package's install script) on failure print one warning, exit 0
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const nativeDir = join(root, "native");
const optional = process.argv.includes("--optional");
const verbose = process.argv.includes("--verbose");
const out = join(nativeDir, "build", "Release", "trustvol_native.node");

function fail(msg, detail) {
  if (optional) {
    console.warn(`trustvol: native addon not built (${msg}); using the fallback sector engine over node:crypto`);
    process.exit(0);
  }
  if (detail) process.stderr.write(detail.endsWith("\n") ? detail : detail + "\n");
  console.error(`trustvol: native addon build failed: ${msg}`);
  process.exit(1);
}

if (process.env.TRUSTVOL_NO_NATIVE === "1") {
  if (optional) process.exit(0);
}

/** node-gyp: the one npm passes to scripts, else the one bundled with the npm next to this node, else PATH. */
function findNodeGyp() {
  const cands = [];
  if (process.env.npm_config_node_gyp) cands.push(process.env.npm_config_node_gyp);
  const npmCli = process.env.npm_execpath;
  if (npmCli) cands.push(join(dirname(npmCli), "..", "node_modules", "node-gyp", "bin", "node-gyp.js"));
  const prefix = resolve(dirname(process.execPath), "..");
  cands.push(join(prefix, "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"));
  cands.push(join(dirname(process.execPath), "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"));
  for (const c of cands) if (c && existsSync(c)) return c;
  const w = spawnSync("sh", ["-c", "command -v node-gyp"], { encoding: "utf8" });
  return w.status === 0 ? w.stdout.trim() : null;
}

/** Headers of the running node: npm's nodedir setting, else <prefix>/include/node (distro/official tarball layout). */
function findNodeDir() {
  const cands = [process.env.npm_config_nodedir, resolve(dirname(process.execPath), "..")];
  for (const c of cands) if (c && existsSync(join(c, "include", "node", "node_api.h")) && existsSync(join(c, "include", "node", "openssl", "evp.h"))) return c;
  return null;
}

if (process.versions.openssl === undefined || process.config?.variables?.node_shared_openssl === true || process.config?.variables?.node_shared_openssl === "true") {
  fail("this node does not embed OpenSSL (built with --shared-openssl)");
}
const gyp = findNodeGyp();
if (!gyp) fail("node-gyp not found");
const nodedir = findNodeDir();
if (!nodedir) fail("node headers with OpenSSL not found (set npm_config_nodedir to the prefix holding include/node)");

const args = [gyp, "rebuild", `--nodedir=${nodedir}`, "--release", "--directory", nativeDir];
const r = spawnSync(gyp.endsWith(".js") ? process.execPath : gyp, gyp.endsWith(".js") ? args : args.slice(1), {
  cwd: nativeDir,
  encoding: "utf8",
  env: { ...process.env, npm_config_offline: "true" },
  stdio: verbose ? "inherit" : "pipe",
  timeout: 300_000,
});
if (r.status !== 0 || !existsSync(out)) fail(`node-gyp exited with ${r.status ?? r.signal}`, `${r.stdout ?? ""}${r.stderr ?? ""}`);

// Smoke test in a child: the addon must load and find node's OpenSSL symbols.
const probe = spawnSync(process.execPath, ["-e", `const m=require(${JSON.stringify(out)});process.stdout.write(m.opensslVersion())`], { encoding: "utf8" });
if (probe.status !== 0) fail("built addon does not load", probe.stderr);
if (!optional) console.log(`trustvol: built ${out} (${probe.stdout})`);
