"use strict";
// The boot matrix: outcome groups (smallest failing configuration, reproducing command) and a pivot of
// any two axes, each cell coloured by the share of failures; a click lists the cell's configurations.
EM.Matrix = class {
  constructor(parent) {
    const m = EM.data.matrix;
    this.m = m;
    const sec = EM.el("section", { class: "panel", id: "matrix-panel" });
    sec.append(EM.el("h2", { text: `${m.configurations} configurations, ${m.failed} failed` }), this.groupTable());
    this.varied = m.axes.filter((a) => a[1].length > 1).map((a) => a[0]);
    const tb = EM.el("div", { class: "toolbar" }, "rows: ", this.rowSel = this.axisSelect(0), " columns: ", this.colSel = this.axisSelect(1));
    this.pivotBox = EM.el("div", { id: "pivot" });
    this.cellBox = EM.el("div", { id: "cell-detail", class: "mono" });
    sec.append(EM.el("h2", { text: "By axis" }), tb, this.pivotBox, this.cellBox);
    parent.append(sec);
    this.pivot();
  }
  axisSelect(k) {
    const s = EM.el("select", { onchange: () => this.pivot() });
    s.append(EM.el("option", { value: "", text: "(none)" }));
    this.m.axes.forEach((a, i) => { if (a[1].length > 1) s.append(EM.el("option", { value: i, text: a[0] })); });
    const varied = this.m.axes.map((a, i) => [a, i]).filter(([a]) => a[1].length > 1);
    if (varied[k]) s.value = String(varied[k][1]);
    return s;
  }
  groupTable() {
    const t = EM.el("table", { class: "grid", id: "groups" });
    t.append(EM.el("thead", {}, EM.el("tr", {}, ...["count", "outcome", "reason", "smallest failing configuration", "reproduce"].map((h) => EM.el("th", { text: h })))));
    const tb = EM.el("tbody");
    this.m.groups.forEach((g, i) => {
      const cls = g.ok ? "ok" : "fail";
      tb.append(EM.el("tr", { "data-group": i, onclick: () => this.highlight(i) }, EM.el("td", { text: String(g.count) }),
        EM.el("td", { class: cls, text: g.outcome + (g.phase ? " in " + g.phase : "") }), EM.el("td", { text: g.reason }),
        EM.el("td", { class: "mono", text: g.ok ? "" : `#${g.smallest}: ${g.smallest_config}` }),
        EM.el("td", { class: "mono", text: g.ok ? "" : g.command })));
    });
    t.append(tb);
    return t;
  }
  pivot() {
    const r = this.rowSel.value === "" ? -1 : +this.rowSel.value, c = this.colSel.value === "" ? -1 : +this.colSel.value;
    const axes = this.m.axes, rowVals = r < 0 ? ["all"] : axes[r][1], colVals = c < 0 ? ["all"] : axes[c][1];
    const cells = new Map();
    for (const row of this.m.rows) {
      const key = (r < 0 ? 0 : row[1 + r]) + "," + (c < 0 ? 0 : row[1 + c]);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(row);
    }
    const t = EM.el("table", { class: "grid", id: "pivot-table" });
    t.append(EM.el("tr", {}, EM.el("th", { text: (r < 0 ? "" : axes[r][0]) + " \\ " + (c < 0 ? "" : axes[c][0]) }), ...colVals.map((v) => EM.el("th", { text: v }))));
    rowVals.forEach((rv, i) => {
      const tr = EM.el("tr", {}, EM.el("th", { text: rv }));
      colVals.forEach((cv, j) => {
        const rows = cells.get(i + "," + j) || [];
        const bad = rows.filter((x) => !this.m.groups[x[0]].ok).length;
        const color = !rows.length ? "#fff" : bad === 0 ? "#c7e9c0" : bad === rows.length ? "#fcae91" : "#fdd49e";
        tr.append(EM.el("td", { class: "cell", style: `background:${color}`, "data-failed": bad, "data-total": rows.length,
          text: rows.length ? `${bad}/${rows.length}` : "", title: `${bad} of ${rows.length} failed`, onclick: () => this.showCell(rows) }));
      });
      t.append(tr);
    });
    this.pivotBox.replaceChildren(t);
  }
  showCell(rows) {
    const list = rows.slice(0, 200).map((x) => { const g = this.m.groups[x[0]]; return `#${x[x.length - 1]} ${g.outcome}: ${x.cmd || this.m.commands[x[x.length - 1]]}`; });
    this.cellBox.replaceChildren(...list.map((l) => EM.el("div", { text: l })), rows.length > 200 ? EM.el("div", { text: `… ${rows.length - 200} more` }) : "");
  }
  highlight(i) {
    document.querySelectorAll("#groups tr.sel").forEach((e) => e.classList.remove("sel"));
    document.querySelector(`#groups tr[data-group="${i}"]`).classList.add("sel");
    this.showCell(this.m.rows.filter((x) => x[0] === i));
  }
};
