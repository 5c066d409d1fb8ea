"use strict";
// earlymm page core: the embedded document, BigInt helpers, the table DAG (groups, aliases, lookups).
const EM = { listeners: [] };
EM.data = JSON.parse(document.getElementById("earlymm-data").textContent);
EM.big = (h) => BigInt("0x" + (h || "0"));
EM.hex = (b) => "0x" + b.toString(16);
EM.hex16 = (b) => "0x" + b.toString(16).padStart(16, "0");
EM.KINDS = ["leaf", "table", "not-present", "reserved-bits", "unreadable", "not-walked"];
EM.LEAF = 0; EM.TABLE = 1; EM.NONPRESENT = 2; EM.BAD = 3; EM.HOLE = 4; EM.SKIPPED = 5;
EM.MASK_BAD = 1 << 8; EM.MASK_HOLE = 1 << 9; EM.MASK_SKIPPED = 1 << 10;

EM.el = function (tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
};
EM.svg = function (tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
EM.size = function (b) {
  const units = [["EiB", 60n], ["PiB", 50n], ["TiB", 40n], ["GiB", 30n], ["MiB", 20n], ["KiB", 10n]];
  for (const [u, s] of units) if (b >= (1n << s)) {
    const whole = b >> s, frac = Number((b - (whole << s)) * 10n >> s);
    return whole + (frac ? "." + frac : "") + " " + u;
  }
  return b + " bytes";
};
// Effective rights class c = U*4 + W*2 + X (AND over the walk; X is "not XD").
EM.classLabel = (c) => (c & 4 ? "user" : "kernel") + (c & 2 ? " writable" : " read-only") + (c & 1 ? " executable" : " no-exec");
EM.SPECIAL = { 8: "reserved bits set (faults)", 9: "table not in the image", 10: "not walked (table limit)" };
EM.PRIORITY = [7, 3, 6, 5, 4, 1, 2, 0];  // the colour a mixed bucket takes: the riskiest class present
EM.maskColor = function (mask) {
  if (mask & EM.MASK_BAD) return "var(--bad)";
  for (const c of EM.PRIORITY) if (mask & (1 << c)) return "var(--c" + c + ")";
  if (mask & EM.MASK_HOLE) return "var(--unread)";
  if (mask & EM.MASK_SKIPPED) return "var(--skipped)";
  return "var(--hole)";
};
EM.maskLabel = function (mask) {
  const out = [];
  for (let c = 7; c >= 0; c--) if (mask & (1 << c)) out.push(EM.classLabel(c));
  for (const b of [8, 9, 10]) if (mask & (1 << b)) out.push(EM.SPECIAL[b]);
  return out.join("; ") || "unmapped";
};
EM.on = (f) => EM.listeners.push(f);
EM.emit = (what, arg) => { for (const f of EM.listeners) f(what, arg); };

// ---- address spaces -------------------------------------------------------------------------------
EM.space = function (modeName) {
  const m = EM.data.modes[modeName];
  const bits = m.ia32e ? m.va_bits : 32;
  const size = 1n << BigInt(bits);
  const canonHigh = m.ia32e ? (1n << 64n) - size : 0n;
  return {
    mode: m, size, half: size >> 1n, ia32e: m.ia32e, canonHigh,
    toVa(x) { return m.ia32e && x >= (size >> 1n) ? x | canonHigh : x; },
    toLinear(va) { return va & (size - 1n); },
    // A region start as a map position: a non-canonical address goes to the edge of the canonical half.
    clampLinear(va) {
      if (!m.ia32e || va < (size >> 1n)) return va < size ? va : size;
      return va >= canonHigh + (size >> 1n) ? va - canonHigh : size >> 1n;
    },
    levels: m.levels.map((l) => ({ ...l, shiftN: BigInt(l.shift), span: 1n << BigInt(l.shift), lsizeN: EM.big(l.lsize) })),
  };
};
EM.node = (id) => EM.data.nodes[id];
EM.flagText = (i) => EM.data.flags[i].join(" ");
// Entry k of a group: [index, entry, target].
EM.groupEntry = function (g, k, lv) {
  const stride = g[2] === EM.LEAF ? lv.lsizeN : 0n;
  const kk = BigInt(k);
  return [g[0] + k, EM.big(g[3]) + kk * stride, EM.big(g[4]) + kk * stride];
};

// The references to each node reachable from a root, in VA order: who points at it, and where it is first.
EM.analyse = function (rootId, space) {
  const refs = new Map(), firstVa = new Map(), order = [];
  if (rootId < 0) return { refs, firstVa, order };
  firstVa.set(rootId, 0n); order.push(rootId);
  const visit = (id, base) => {
    const n = EM.node(id), lv = space.levels[n[1]];
    for (const g of n[2]) {
      if (g[2] !== EM.TABLE) continue;
      const child = g[7], va = base + BigInt(g[0]) * lv.span;
      if (!refs.has(child)) refs.set(child, []);
      refs.get(child).push([id, g[0], va]);
      if (!firstVa.has(child)) { firstVa.set(child, va); order.push(child); visit(child, va); }
    }
  };
  visit(rootId, 0n);
  return { refs, firstVa, order };
};

// The walk of one address through the DAG: the entries met from the top down.
EM.lookup = function (rootId, space, linear) {
  const path = [];
  let id = rootId, base = 0n, code = 7;
  while (id >= 0) {
    const n = EM.node(id), lv = space.levels[n[1]];
    const idx = Number((linear - base) >> lv.shiftN);
    const g = n[2].find((g) => g[0] <= idx && idx < g[0] + g[1]);
    if (!g) { path.push({ depth: n[1], node: id, idx, kind: "empty" }); break; }
    const [, e, t] = EM.groupEntry(g, idx - g[0], lv);
    code &= g[6];
    path.push({ depth: n[1], node: id, idx, group: g, entry: e, target: t, kind: EM.KINDS[g[2]], code });
    base += BigInt(idx) * lv.span;
    if (g[2] === EM.LEAF) { path.pa = t + (linear - base); path.code = code; break; }
    id = g[2] === EM.TABLE ? g[7] : -1;
  }
  return path;
};

// ---- views: ptdump spaces or boot snapshots -------------------------------------------------------
EM.state = { view: 0, root: 0 };
EM.current = function () {
  const v = EM.data.views[EM.state.view];
  const r = v.roots[Math.min(EM.state.root, v.roots.length - 1)];
  return { view: v, root: r, space: EM.space(v.mode) };
};
EM.select = function (viewIndex, rootIndex) {
  EM.state.view = viewIndex;
  if (rootIndex !== undefined) EM.state.root = rootIndex;
  EM.emit("view", EM.current());
};
