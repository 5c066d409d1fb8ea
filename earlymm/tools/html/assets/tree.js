"use strict";
// The page-table tree explorer: top table → leaf, entries decoded, expanded on demand. A table that
// several entries point at is shown once (where it first appears, in VA order), with its aliases listed;
// the other references jump there.
EM.Tree = class {
  constructor(parent) {
    this.root = EM.el("section", { class: "panel", id: "tree-panel" });
    this.root.append(EM.el("h2", { text: "Page tables" }));
    this.head = EM.el("div", { class: "toolbar" });
    this.body = EM.el("div", { class: "tree", id: "tree" });
    this.root.append(this.head, this.body);
    parent.append(this.root);
    EM.on((what, arg) => { if (what === "view") this.draw(); if (what === "va") this.reveal(arg); });
  }
  draw() {
    const cur = EM.current();
    this.sp = cur.space; this.cur = cur;
    this.info = EM.analyse(cur.root.root, this.sp);
    this.shown = new Map();  // node id -> its expanded element (the one place it is shown)
    this.prevNodes = this.previousNodes();
    const v = cur.view;
    this.head.replaceChildren();
    if (v.roots.length > 1) {
      v.roots.forEach((r, i) => this.head.append(EM.el("button", { class: "root-choice", text: `${r.name} @ ${EM.hex(EM.big(r.addr))}`,
        onclick: () => EM.select(EM.state.view, i) })));
    }
    this.head.append(EM.el("span", { class: "muted", text: `${v.label}: ${cur.root.name} ${EM.hex(EM.big(cur.root.addr))}, ` +
      `${cur.root.tables} tables, ${v.mode} paging` + (cur.root.capped ? " — table limit reached, the rest is not walked" : "") }));
    this.body.replaceChildren();
    if (cur.root.root < 0) { this.body.append(EM.el("div", { class: "fail", text: "the top-level table is not in the image" })); return; }
    this.body.append(this.nodeEl(cur.root.root, 0n, 7));
  }
  // Nodes of the previous snapshot's same root: what is new here is marked "changed".
  previousNodes() {
    const i = EM.state.view;
    if (i === 0 || EM.data.kind !== "boot") return null;
    const prev = EM.data.views[i - 1], r = prev.roots.find((r) => r.name === this.cur.root.name);
    return r ? new Set(EM.analyse(r.root, EM.space(prev.mode)).order) : null;
  }
  nodeEl(id, base, code) {
    const n = EM.node(id), lv = this.sp.levels[n[1]];
    const box = EM.el("div", { class: "tnode", "data-node": id, "data-table": n[0] });
    const refs = this.info.refs.get(id) || [];
    const head = EM.el("div", { class: "thead" }, `${lv.name} table at ${EM.hex(EM.big(n[0]))}`,
      EM.el("span", { class: "muted", text: ` — ${n[2].length} groups, ${n[4]} leaves below` }));
    if (refs.length > 1) head.append(EM.el("span", { class: "badge shared", text: `shared by ${refs.length} entries` }));
    if (this.prevNodes && !this.prevNodes.has(id)) head.append(EM.el("span", { class: "badge changed", text: "changed" }));
    box.append(head);
    if (refs.length > 1) {
      const list = refs.slice(0, 16).map(([p, idx, va]) => `${this.sp.levels[EM.node(p)[1]].entry}[${idx}] of ${EM.hex(EM.big(EM.node(p)[0]))} (VA ${EM.hex(this.sp.toVa(va))})`);
      box.append(EM.el("div", { class: "aliases", text: "aliases: " + list.join("; ") + (refs.length > 16 ? `; … ${refs.length - 16} more` : "") }));
    }
    for (const g of n[2]) box.append(this.groupEl(g, n, base, code));
    this.shown.set(id, box);
    return box;
  }
  groupEl(g, n, base, code) {
    const lv = this.sp.levels[n[1]], kind = EM.KINDS[g[2]];
    if (g[1] === 1) return this.entryEl(g, 0, n, base, code);
    const wrap = EM.el("div", { class: "tgroup" });
    const [i0, e0] = EM.groupEntry(g, 0, lv);
    const a = base + BigInt(g[0]) * lv.span, b = a + BigInt(g[1]) * lv.span;
    const c = code & g[6];
    const row = EM.el("div", { class: `trow kind-${kind}`, "data-idx": i0 },
      EM.el("span", { class: "tog", text: "▸" }),
      EM.el("span", { class: "mono" }, `[${g[0]}..${g[0] + g[1] - 1}] ${EM.hex16(this.sp.toVa(a))}–${EM.hex16(this.sp.toVa(b - 1n))} `),
      EM.el("span", { class: "k", text: `${g[1]} × ${kind}` }),
      EM.el("span", { class: "mono", text: ` first ${EM.hex(e0)} [${EM.flagText(g[5])}]` + (g[2] === EM.LEAF ? ` ${EM.size(lv.lsizeN)} pages → ${EM.hex(EM.big(g[4]))}…, ${EM.classLabel(c)}` : "") }));
    let open = null;
    row.querySelector(".tog").addEventListener("click", (ev) => {
      ev.target.textContent = open ? "▸" : "▾";
      if (open) { open.remove(); open = null; return; }
      open = EM.el("div", { class: "tnode" });
      for (let k = 0; k < g[1]; k++) open.append(this.entryEl(g, k, n, base, code));
      wrap.append(open);
    });
    wrap.append(row);
    return wrap;
  }
  entryEl(g, k, n, base, code) {
    const lv = this.sp.levels[n[1]], kind = EM.KINDS[g[2]];
    const [idx, e, t] = EM.groupEntry(g, k, lv);
    const a = base + BigInt(idx) * lv.span, c = code & g[6];
    const row = EM.el("div", { class: `trow kind-${kind}`, "data-idx": idx, "data-va": EM.hex(this.sp.toVa(a)) });
    const tog = EM.el("span", { class: "tog", text: g[2] === EM.TABLE ? "▸" : "" });
    row.append(tog, EM.el("span", { class: "mono", text: `[${idx}] ${EM.hex16(this.sp.toVa(a))} ${lv.entry} ${EM.hex(e)} ` }),
      EM.el("span", { class: "k", text: kind }), EM.el("span", { class: "mono", text: ` [${EM.flagText(g[5])}]` }));
    if (g[2] === EM.LEAF) {
      row.append(EM.el("span", { class: "mono", text: ` → ${EM.hex(t)} (${EM.size(lv.lsizeN)}), ${EM.classLabel(c)}` }));
      if ((c & 3) === 3) row.append(EM.el("span", { class: "badge wx", text: "W+X" }));
    } else if (g[2] === EM.TABLE || g[2] === EM.HOLE || g[2] === EM.SKIPPED) {
      row.append(EM.el("span", { class: "mono", text: ` → table ${EM.hex(t)}` }));
    }
    const wrap = EM.el("div", {}, row);
    if (g[2] !== EM.TABLE) return wrap;
    const child = g[7], refs = this.info.refs.get(child) || [];
    const canonical = this.info.firstVa.get(child) === a;
    if (refs.length > 1) row.append(EM.el("span", { class: "badge shared", text: canonical ? "shared" : "alias" }));
    let open = null;
    const toggle = () => {
      if (open) { open.remove(); open = null; tog.textContent = "▸"; return null; }
      tog.textContent = "▾";
      if (canonical) open = this.nodeEl(child, a, c);
      else {
        const first = this.info.firstVa.get(child);
        open = EM.el("div", { class: "tnode aliases", "data-first": EM.hex(first) }, `same table as at ${EM.hex(this.sp.toVa(first))} (shown there once) `,
          EM.el("a", { class: "jump", text: "go there", onclick: () => this.reveal(this.sp.toVa(first)) }));
      }
      wrap.append(open);
      return open;
    };
    tog.addEventListener("click", toggle);
    row.expand = () => (open ? open : toggle());
    return wrap;
  }
  // Expand the rows on the walk of ``va`` and scroll to the last one.
  reveal(va) {
    const sp = this.sp, lin = sp.toLinear(BigInt(va));
    let box = this.body.querySelector(".tnode"), last = null;
    for (let guard = 0; box && guard < 8; guard++) {
      const lv = sp.levels[EM.node(+box.dataset.node)[1]];
      const rows = [...box.querySelectorAll(":scope > div > .trow, :scope > .tgroup > .trow")];
      let row = null;
      for (const r of rows) {
        const rva = r.dataset.va ? sp.toLinear(BigInt(r.dataset.va)) : null;
        if (rva !== null && rva <= lin && lin < rva + lv.span) { row = r; break; }
        if (rva === null && r.parentElement.classList.contains("tgroup")) {
          const idx = +r.dataset.idx, g = EM.node(+box.dataset.node)[2].find((g) => g[0] === idx);
          const a = this.baseOf(box) + BigInt(idx) * lv.span;
          if (g && a <= lin && lin < a + BigInt(g[1]) * lv.span) {
            if (!r.parentElement.querySelector(".tnode")) r.querySelector(".tog").click();
            const inner = [...r.parentElement.querySelectorAll(":scope > .tnode > div > .trow")];
            row = inner.find((x) => { const v = sp.toLinear(BigInt(x.dataset.va)); return v <= lin && lin < v + lv.span; }) || null;
            break;
          }
        }
      }
      if (!row) break;
      last = row;
      if (!row.expand) break;
      const opened = row.expand();
      if (!opened || !opened.dataset.node) {
        // an alias: continue at the same offset inside the one place the shared table is shown
        const first = opened && opened.dataset.first;
        if (first) { this.reveal(sp.toVa(BigInt(first) + lin - sp.toLinear(BigInt(row.dataset.va)))); return; }
        break;
      }
      box = opened;
    }
    this.body.querySelectorAll(".trow.focus").forEach((r) => r.classList.remove("focus"));
    if (last) { last.classList.add("focus"); last.scrollIntoView({ block: "nearest" }); }
  }
  baseOf(box) {
    const row = box.parentElement && box.parentElement.querySelector(":scope > .trow");
    return row && row.dataset.va ? this.sp.toLinear(BigInt(row.dataset.va)) : 0n;
  }
};
