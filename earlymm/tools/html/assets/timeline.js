"use strict";
// A boot's timeline: phases, CR3 switches, each early #PF with its address, pool pages in use with the
// resets; clicking an event shows the tables as they were then (the snapshot at or before it).
EM.Timeline = class {
  constructor(parent) {
    const b = EM.data.boot;
    this.b = b; this.W = 1100; this.H = 150;
    const sec = EM.el("section", { class: "panel", id: "timeline-panel" });
    sec.append(EM.el("h2", { text: "Boot" }), this.summary());
    this.svg = EM.svg("svg", { id: "timeline", class: "timeline", width: this.W, height: this.H, viewBox: `0 0 ${this.W} ${this.H}` });
    this.sel = EM.el("div", { id: "selected-event", class: "mono" });
    sec.append(this.svg, this.sel, this.eventTable());
    parent.append(sec);
    this.draw();
  }
  x(i) { return 10 + (this.W - 20) * i / Math.max(1, this.b.total - 1); }
  summary() {
    const b = this.b, s = b.stats, d = EM.el("div", { id: "boot-summary" });
    d.append(EM.el("div", { class: b.crashed ? "fail" : "ok", text: `${b.outcome} in ${b.phase} — ${b.reason}` }));
    d.append(EM.el("div", { text: `Linux ${b.profile}, ${b.variant} early #PF handler, pool ${b.pool_size}, ` +
      `${EM.size(EM.big(b.ram))} RAM, kernel at ${EM.hex(EM.big(b.kernel_at))}` }));
    d.append(EM.el("div", { text: `page faults ${s.page_faults}, pool allocations ${s.pool_allocations}, resets ${s.pool_resets}, ` +
      `high-water ${s.pool_high_water}/${s.pool_size}` }));
    if (s.final_table_pages) {
      const t = EM.el("table", { class: "grid", id: "final-tables" });
      t.append(EM.el("tr", {}, ...["final table pages", "pgd", "pud", "pmd", "pte"].map((h) => EM.el("th", { text: h }))));
      const f = s.final_table_pages;
      t.append(EM.el("tr", {}, EM.el("td", { text: "count" }), ...["pgd", "pud", "pmd", "pte"].map((k) => EM.el("td", { text: String(f[k]) }))));
      d.append(t);
    }
    const fails = b.invariants.filter((x) => !x[1]).length;
    const det = EM.el("details", {}, EM.el("summary", { class: fails ? "fail" : "ok",
      text: `invariants (spec §3.11): ${b.invariants.length - fails} pass, ${fails} fail` }));
    if (fails) det.setAttribute("open", "");
    const inv = EM.el("ul", { id: "invariants" });
    for (const [name, ok, detail] of b.invariants) inv.append(EM.el("li", { class: ok ? "ok" : "fail", text: `${ok ? "pass" : "FAIL"} ${name}${!ok && detail ? " — " + detail : ""}` }));
    det.append(inv);
    d.append(det);
    if (b.snapshots_dropped) d.append(EM.el("div", { class: "muted", text: `${b.snapshots_dropped} later events have no snapshot of their own (snapshot limit)` }));
    return d;
  }
  draw() {
    const s = this.svg, b = this.b, W = this.W;
    const colors = ["#9ecae1", "#a1d99b", "#fdae6b", "#bcbddc", "#fdd0a2", "#c7e9c0"];
    b.phases.forEach(([i, name], k) => {
      const end = k + 1 < b.phases.length ? b.phases[k + 1][0] : b.total;
      s.append(EM.svg("rect", { class: "phase", x: this.x(i), y: 0, width: Math.max(1, this.x(end) - this.x(i)), height: 70, fill: colors[k % colors.length] }));
      s.append(EM.svg("text", { x: this.x(i) + 3, y: 12 }, name));
    });
    s.append(EM.svg("text", { x: 2, y: 34, class: "muted" }, "#PF"), EM.svg("text", { x: 2, y: 56 }, "CR3"));
    const mark = (ev, shape) => { shape.setAttribute("class", "mark"); shape.dataset.event = ev[0];
      shape.append(EM.svg("title", {}, `${ev[0]}: ${ev[2]}`)); shape.addEventListener("click", () => this.select(ev[0])); s.append(shape); };
    for (const ev of b.events) {
      if (ev[1] === "fault_raised") mark(ev, EM.svg("circle", { cx: this.x(ev[0]), cy: 30, r: 4, fill: ev[4] === 14 ? "#e6550d" : "#a50f15" }));
      else if (ev[1] === "cr_write" && ev[4] === "cr3") mark(ev, EM.svg("rect", { x: this.x(ev[0]) - 2, y: 44, width: 4, height: 22, fill: "#08519c" }));
      else if (ev[1] === "pool_reset") mark(ev, EM.svg("path", { d: `M${this.x(ev[0])},74 l-5,9 l10,0 z`, fill: "#756bb1" }));
      else if (ev[1] === "run_ended") mark(ev, EM.svg("rect", { x: this.x(ev[0]) - 3, y: 0, width: 6, height: 70, fill: b.crashed ? "#c00" : "#1a7f37" }));
    }
    // pool pages in use
    const high = Math.max(0, ...b.pool.map((p) => p[1]));
    const top = 90, h = 50, max = Math.max(1, high);  // scaled to the high-water mark, so small pools show
    s.append(EM.svg("line", { x1: 10, x2: W - 10, y1: top + h, y2: top + h, stroke: "#999" }));
    s.append(EM.svg("text", { x: 12, y: top + 8, class: "muted" }, `pool pages in use: 0–${high} of ${b.pool_size}`));
    let d = "", last = 0;
    for (const [i, used] of b.pool) {
      const y = top + h - h * Math.min(used, max) / max;
      d += d ? ` H${this.x(i).toFixed(1)} V${y.toFixed(1)}` : `M${this.x(i).toFixed(1)},${y.toFixed(1)}`;
      last = y;
    }
    d += ` H${(W - 10).toFixed(1)} V${last.toFixed(1)}`;
    s.append(EM.svg("path", { id: "pool-series", d, fill: "none", stroke: "#756bb1", "stroke-width": 1.5 }));
  }
  eventTable() {
    const wrap = EM.el("div", { class: "events" });
    const t = EM.el("table", { class: "grid", id: "events" });
    t.append(EM.el("thead", {}, EM.el("tr", {}, EM.el("th", { text: "#" }), EM.el("th", { text: "event" }), EM.el("th", { text: "what" }))));
    const tb = EM.el("tbody");
    for (const ev of this.b.events) {
      tb.append(EM.el("tr", { "data-event": ev[0], onclick: () => this.select(ev[0]) }, EM.el("td", { text: String(ev[0]) }),
        EM.el("td", { text: ev[1] }), EM.el("td", { class: "mono", text: ev[2] })));
    }
    t.append(tb);
    if (this.b.omitted) wrap.append(EM.el("div", { class: "muted", text: `${this.b.omitted} events not listed` }));
    wrap.append(t);
    return wrap;
  }
  // Show the tables at event i: the last snapshot taken at or before it.
  select(i) {
    let best = 0;
    EM.data.views.forEach((v, k) => { if (v.event <= i) best = k; });
    const v = EM.data.views[best];
    EM.select(best, Math.min(EM.state.root, v.roots.length - 1));
    document.querySelectorAll("[data-event].selected, tr.sel").forEach((e) => e.classList.remove("selected", "sel"));
    document.querySelectorAll(`[data-event="${i}"]`).forEach((e) => e.classList.add(e.tagName === "TR" ? "sel" : "selected"));
    const ev = this.b.events.find((e) => e[0] === i);
    this.sel.textContent = `event ${i}${ev ? ": " + ev[2] : ""} — tables as at event ${v.event} (CR3 ${EM.hex(EM.big(v.cr3))})`;
    this.sel.dataset.view = best;
  }
};
