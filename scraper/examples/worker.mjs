#!/usr/bin/env node
// A missionfs worker in Node.js: readdir, rename, readFile and write + fsync are the protocol.
// Usage: node worker.mjs MNT — writes one synthetic row per task in the reference CSV schema.
// Prints "done REL" per commit; stops when nothing is pending; backs off on EAGAIN (<= 30 s).
import { createHash } from "node:crypto";
import fs from "node:fs";

const mnt = process.argv[2];
if (!mnt) { console.error("usage: node worker.mjs MNT"); process.exit(2); }
const me = `node-${process.pid}`;
const HEADER = "source,source_id,name,category,lat,lon,address,phone,website,scraped_at\n";
const failed = new Set();
let seq = 0, waitMs = 0; // waitMs: the claim backoff (0: claims work); jitter: no retries in step
const backoff = () => { if (!waitMs) console.error(`${me}: claims refused (S3 unreachable?); backing off`); waitMs = Math.min(30000, waitMs ? waitMs * 2 : 500); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, waitMs * (0.5 + Math.random() / 2)); };
const ls = (dir) => { try { return fs.readdirSync(dir); } catch (e) { if (e.code === "ENOENT") return []; throw e; } };
const spread = (xs) => { const k = process.pid % (xs.length || 1); return xs.slice(k).concat(xs.slice(0, k)); };
const field = (s) => (/[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s);

function* pending() { // one directory level at a time: the first claim needs three listings
  for (const lat of spread(ls(`${mnt}/pending`)))
    for (const lon of spread(ls(`${mnt}/pending/${lat}`)))
      for (const name of spread(ls(`${mnt}/pending/${lat}/${lon}`))) yield `${lat}/${lon}/${name}`;
}
function inside(lo, hi, n) { // a point of [lo, hi) in micro-degrees, no float rounding to hi
  const a = Math.round(lo * 1e6), b = Math.round(hi * 1e6);
  return ((a + (n % (b - a))) / 1e6).toFixed(6);
}
function csv(t) {
  const h = createHash("sha256").update(t.rel).digest();
  const id = h.toString("hex").slice(0, 12);
  const row = ["node-synthetic", id, `${t.phrase} (node)`, t.phrase, inside(t.south, t.north, h.readUInt32BE(0)),
    inside(t.west, t.east, h.readUInt32BE(4)), `${h[8] + 1} Example Avenue`, "", "",
    new Date().toISOString().slice(0, 19) + "Z"];
  return HEADER + row.map(field).join(",") + "\n";
}

for (;;) {
  let tried = 0;
  for (const rel of pending()) {
    if (failed.has(rel)) continue;
    tried++;
    try { fs.renameSync(`${mnt}/pending/${rel}`, `${mnt}/claimed/${rel}`); waitMs = 0; } // the claim
    catch (e) { if (e.code === "ENOENT") continue; if (e.code !== "EAGAIN") throw e; backoff(); break; } // ENOENT: lost the race
    const tmp = `${mnt}/tmp/${me}-${++seq}.csv`;
    try {
      const task = JSON.parse(fs.readFileSync(`${mnt}/claimed/${rel}`, "utf8"));
      const fd = fs.openSync(tmp, "wx");
      try { fs.writeSync(fd, csv(task)); fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
      fs.renameSync(tmp, `${mnt}/done/${rel}`); // the commit
      console.log(`done ${rel}`); break; // list again: pending/ moved while we worked
    } catch (e) {
      console.error(`${me}: ${rel} failed (${e.message}); claim released`);
      failed.add(rel);
      fs.rmSync(`${mnt}/claimed/${rel}`, { force: true });
      fs.rmSync(tmp, { force: true });
    }
  }
  if (!tried) break;
}
