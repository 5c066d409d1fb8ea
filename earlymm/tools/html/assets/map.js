"use strict";
// The address-space map: the whole virtual space (2^48 or 2^57 canonical bytes; the non-canonical gap
// is a marked line, not to scale) down to one page, drawn from the DAG at the resolution of the screen.
EM.Map = class {
  constructor(parent) {
    this.W = 1100; this.H = 118; this.BAR_Y = 34; this.BAR_H = 44;
    this.selectedVa = null;
    this.root = EM.el("section", { class: "panel", id: "map-panel" });
    this.root.append(EM.el("h2", { text: "Address space" }));
    const tb = EM.el("div", { class: "toolbar" });
    const goto = EM.el("input", { type: "text", id: "map-goto", placeholder: "VA, e.g. 0xffffffff81000000" });
    tb.append(
      EM.el("button", { id: "zoom-out", text: "−", title: "zoom out", onclick: () => this.zoom(4) }),
      EM.el("button", { id: "zoom-in", text: "+", title: "zoom in", onclick: () => this.zoom(0.25) }),
      EM.el("button", { id: "zoom-all", text: "whole space", onclick: () => this.reset() }),
      goto, EM.el("button", { text: "go to page", onclick: () => this.gotoText(goto.value) }),
      this.info = EM.el("span", { class: "muted", id: "map-window" }));
    this.root.append(tb);
    this.svg = EM.svg("svg", { id: "map", width: this.W, height: this.H, viewBox: `0 0 ${this.W} ${this.H}` });
    this.root.append(this.svg, this.legend(), this.detail = EM.el("div", { id: "map-detail", class: "mono" }));
    parent.append(this.root);
    this.svg.addEventListener("wheel", (ev) => { ev.preventDefault(); this.zoom(ev.deltaY < 0 ? 0.5 : 2, this.xAt(ev)); });
    this.svg.addEventListener("mousedown", (ev) => { this.drag = this.xAt(ev); });
    this.svg.addEventListener("mouseup", (ev) => {
      const a = this.drag, b = this.xAt(ev); this.drag = null;
      if (a !== null && a !== undefined && Math.abs(a - b) > 4) this.zoomPixels(Math.min(a, b), Math.max(a, b));
    });
    EM.on((what) => { if (what === "view") this.draw(); });
  }
  legend() {
    const l = EM.el("div", { class: "legend" });
    const sw = (color, text, extra) => EM.el("span", {}, EM.el("span", { class: "sw", style: `background:${color};${extra || ""}` }), text);
    for (const c of [1, 0, 2, 3, 5, 4, 6, 7]) l.append(sw(`var(--c${c})`, EM.classLabel(c)));
    l.append(sw("var(--hole)", "unmapped"), sw("var(--bad)", "reserved bits"), sw("var(--unread)", "table not in image"),
      sw("var(--skipped)", "not walked"), sw("#fff", "alias (shared table)", "background-image:repeating-linear-gradient(45deg,#000 0 1px,transparent 1px 4px)"),
      sw("#fff", "non-canonical", "background-image:repeating-linear-gradient(-45deg,#c00 0 2px,#fff 2px 4px)"));
    return l;
  }
  xAt(ev) { const r = this.svg.getBoundingClientRect(); return (ev.clientX - r.left) * this.W / r.width; }
  get space() { return EM.current().space; }
  reset() { this.lo = 0n; this.hi = this.space.size; this.draw(); }
  // Zoom by a factor around pixel x (the centre by default); the window stays inside the space.
  zoom(f, x) {
    const span = this.hi - this.lo, px = x === undefined ? this.W / 2 : x;
    const at = this.lo + BigInt(Math.floor(Number(span) * px / this.W));
    let ns = BigInt(Math.floor(Number(span) * f));
    if (f < 1 && ns < 4096n) ns = 4096n;
    if (ns > this.space.size) ns = this.space.size;
    let lo = at - BigInt(Math.floor(Number(ns) * px / this.W));
    this.zoomTo(lo, lo + ns);
  }
  zoomPixels(a, b) {
    const span = Number(this.hi - this.lo);
    this.zoomTo(this.lo + BigInt(Math.floor(span * a / this.W)), this.lo + BigInt(Math.floor(span * b / this.W)));
  }
  zoomTo(lo, hi) {
    lo = BigInt(lo); hi = BigInt(hi);
    if (hi - lo < 4096n) { const mid = (lo + hi) >> 1n; lo = (mid & ~0xfffn); hi = lo + 4096n; }
    const size = this.space.size;
    if (hi - lo > size) { lo = 0n; hi = size; }
    if (lo < 0n) { hi -= lo; lo = 0n; }
    if (hi > size) { lo -= hi - size; hi = size; }
    this.lo = lo; this.hi = hi; this.draw();
  }
  gotoVa(va) {
    const lin = this.space.toLinear(BigInt(va)) & ~0xfffn;
    this.selectedVa = BigInt(va);
    this.zoomTo(lin, lin + 4096n);
    this.showDetail(BigInt(va));
    EM.emit("va", BigInt(va));
  }
  gotoText(t) { try { this.gotoVa(BigInt(t.trim())); } catch (e) { this.detail.textContent = "not an address: " + t; } }
  px(x) { return Number(x - this.lo) * this.W / Number(this.hi - this.lo); }
  // Segments of the window: [x0, x1, mask, alias, lo, hi] merged at pixel resolution.
  segments() {
    const cur = EM.current(), sp = cur.space, out = [];
    if (cur.root.root < 0) return out;
    const refs = this.refs = EM.analyse(cur.root.root, sp).refs;
    const lo = this.lo, hi = this.hi, scale = this.W / Number(hi - lo);
    const push = (a, b, mask, alias) => {
      const s = a < lo ? lo : a, e = b > hi ? hi : b;
      const x0 = Number(s - lo) * scale, x1 = Number(e - lo) * scale;
      const last = out[out.length - 1];
      if (last && x0 - last[1] < 0.5 && (x1 - x0 < 1 || last[1] - last[0] < 1 || (last[2] === mask && last[3] === alias))) {
        last[1] = Math.max(last[1], x1); last[2] |= mask; last[3] = last[3] || alias; last[5] = e; return;
      }
      out.push([x0, x1, mask, alias, s, e]);
    };
    const walk = (id, base, code, alias) => {
      const n = EM.node(id), lv = sp.levels[n[1]];
      for (const g of n[2]) {
        const a = base + BigInt(g[0]) * lv.span, b = a + BigInt(g[1]) * lv.span;
        if (b <= lo || a >= hi || g[2] === EM.NONPRESENT) continue;
        const c = code & g[6];
        if (g[2] === EM.LEAF) push(a, b, 1 << c, alias);
        else if (g[2] !== EM.TABLE) push(a, b, 1 << (g[2] + 5), alias);
        else {
          const child = EM.node(g[7]), shared = alias || (refs.get(g[7]) || []).length > 1;
          if (Number(lv.span) * scale < 2) {
            let m = child[3] & 0x700;
            for (let k = 0; k < 8; k++) if (child[3] & (1 << k)) m |= 1 << (k & c);
            if (m) push(a, b, m, shared);
          } else walk(g[7], a, c, shared);
        }
      }
    };
    walk(cur.root.root, 0n, 7, false);
    return out;
  }
  draw() {
    const sp = this.space;
    if (this.lo === undefined || this.hi > sp.size || this.mode !== sp.mode) { this.lo = 0n; this.hi = sp.size; }
    this.mode = sp.mode;
    const s = this.svg; s.replaceChildren();
    const defs = EM.svg("defs");
    const pat = EM.svg("pattern", { id: "hatch", width: 5, height: 5, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
    pat.append(EM.svg("rect", { width: 1.2, height: 5, fill: "#000", opacity: 0.55 }));
    const nc = EM.svg("pattern", { id: "noncanon", width: 4, height: 4, patternUnits: "userSpaceOnUse", patternTransform: "rotate(-45)" });
    nc.append(EM.svg("rect", { width: 2, height: 4, fill: "#c00" }));
    defs.append(pat, nc); s.append(defs);
    s.append(EM.svg("rect", { x: 0, y: this.BAR_Y, width: this.W, height: this.BAR_H, fill: "var(--hole)", class: "hole" }));
    this.drawRegions();
    const segs = this.segments();
    const g = EM.svg("g", { id: "map-segments" });
    for (const [x0, x1, mask, alias, a, b] of segs) {
      const r = EM.svg("rect", { class: "seg", x: x0.toFixed(2), y: this.BAR_Y, width: Math.max(x1 - x0, 2).toFixed(2),
        height: this.BAR_H, fill: EM.maskColor(mask), "data-mask": mask, "data-alias": alias ? 1 : 0,
        "data-lo": EM.hex(sp.toVa(a)), "data-hi": EM.hex(sp.toVa(b - 1n)) });
      r.append(EM.svg("title", {}, `${EM.hex16(sp.toVa(a))}–${EM.hex16(sp.toVa(b - 1n))}: ${EM.maskLabel(mask)}${alias ? " (aliased)" : ""}`));
      r.addEventListener("click", () => this.clickSegment(a, b));
      g.append(r);
      if (alias) g.append(EM.svg("rect", { x: x0.toFixed(2), y: this.BAR_Y, width: Math.max(x1 - x0, 0.6).toFixed(2), height: this.BAR_H,
        fill: "url(#hatch)", "pointer-events": "none", class: "alias" }));
    }
    s.append(g);
    if (sp.ia32e && this.lo < sp.half && sp.half <= this.hi) {
      const x = this.px(sp.half);
      const r = EM.svg("rect", { id: "noncanonical", x: (x - 3).toFixed(2), y: this.BAR_Y - 6, width: 6, height: this.BAR_H + 12, fill: "url(#noncanon)" });
      r.append(EM.svg("title", {}, `non-canonical: ${EM.hex16(sp.half)}–${EM.hex16(sp.canonHigh - 1n + sp.half)} (${EM.size((1n << 64n) - sp.size)}, not to scale); any access is #GP`));
      s.append(r);
    }
    this.drawAxis();
    this.info.textContent = `window ${EM.hex16(sp.toVa(this.lo))} – ${EM.hex16(sp.toVa(this.hi - 1n))} (${EM.size(this.hi - this.lo)}), ${segs.length} segments`;
    this.svg.setAttribute("data-lo", EM.hex(this.lo)); this.svg.setAttribute("data-hi", EM.hex(this.hi));
  }
  drawRegions() {
    const cur = EM.current(), sp = cur.space, marks = cur.view.markers || EM.data.markers || [];
    const g = EM.svg("g", { id: "map-regions" });
    for (let i = 0; i < marks.length; i++) {
      const a = sp.clampLinear(EM.big(marks[i][0])), b = i + 1 < marks.length ? sp.clampLinear(EM.big(marks[i + 1][0])) : sp.size;
      if (b <= a || b <= this.lo || a >= this.hi) continue;
      const x0 = Math.max(0, this.px(a)), x1 = Math.min(this.W, this.px(b));
      const r = EM.svg("rect", { class: "region-band", x: x0, y: 4, width: Math.max(x1 - x0, 0.5), height: 24, fill: i % 2 ? "#e8eef5" : "#d6e2ef", "data-name": marks[i][1] });
      r.append(EM.svg("title", {}, `${marks[i][1]}: from ${EM.hex16(EM.big(marks[i][0]))} (click to zoom)`));
      r.addEventListener("click", () => this.zoomTo(a, b));
      g.append(r);
      if (x1 - x0 > marks[i][1].length * 6 + 6) g.append(EM.svg("text", { x: x0 + 4, y: 20, class: "region-label" }, marks[i][1]));
    }
    this.svg.append(g);
  }
  drawAxis() {
    const sp = this.space, g = EM.svg("g", { class: "axis" }), span = this.hi - this.lo;
    for (let k = 0; k <= 4; k++) {
      const x = Math.min(this.W - 1, k * this.W / 4), lin = this.lo + span * BigInt(k) / 4n;
      g.append(EM.svg("line", { x1: x, x2: x, y1: this.BAR_Y + this.BAR_H, y2: this.BAR_Y + this.BAR_H + 5, stroke: "#999" }));
      const anchor = k === 0 ? "start" : k === 4 ? "end" : "middle";
      g.append(EM.svg("text", { x, y: this.BAR_Y + this.BAR_H + 17, "text-anchor": anchor }, EM.hex16(sp.toVa(lin < sp.size ? lin : sp.size - 1n))));
    }
    this.svg.append(g);
  }
  clickSegment(a, b) {
    const sp = this.space, va = sp.toVa(a);
    this.showDetail(va, b - a);
    EM.emit("va", va);
  }
  showDetail(va, len) {
    const cur = EM.current(), sp = cur.space;
    const path = EM.lookup(cur.root.root, sp, sp.toLinear(va));
    const steps = path.map((p) => p.kind === "empty" ? `${sp.levels[p.depth].entry}[${p.idx}] = 0`
      : `${sp.levels[p.depth].entry}[${p.idx}] = ${EM.hex(p.entry)} (${p.kind})`).join(" → ");
    const res = path.pa !== undefined ? `${EM.hex(va)} → ${EM.hex(path.pa)}, ${EM.classLabel(path.code)}` : `${EM.hex(va)}: not mapped`;
    this.detail.replaceChildren(EM.el("div", { text: res + (len ? ` (segment of ${EM.size(len)})` : "") }),
      EM.el("div", { class: "muted", text: steps }));
  }
};
