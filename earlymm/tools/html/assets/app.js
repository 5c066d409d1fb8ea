"use strict";
// Page start-up: which panels a document has, and the handle tests and users can script (window.earlymm).
(function () {
  const app = document.getElementById("app");
  app.replaceChildren();
  document.getElementById("source").textContent = EM.data.source || "";
  const api = { data: EM.data, select: EM.select };
  if (EM.data.kind === "matrix") {
    api.matrix = new EM.Matrix(app);
  } else {
    if (EM.data.kind === "boot") api.timeline = new EM.Timeline(app);
    const views = EM.data.views;
    if (views.length > 1 && EM.data.kind !== "boot") {
      const tb = EM.el("div", { class: "toolbar" }, "address space: ");
      views.forEach((v, i) => tb.append(EM.el("button", { text: v.label, onclick: () => EM.select(i, 0) })));
      app.append(tb);
    }
    if (views.length) {
      api.map = new EM.Map(app);
      api.tree = new EM.Tree(app);
      EM.select(EM.data.kind === "boot" ? views.length - 1 : 0, 0);
    } else {
      app.append(EM.el("div", { class: "panel", text: "No page tables were recorded (paging was never enabled)." }));
    }
  }
  window.earlymm = api;
  document.body.dataset.ready = "1";
})();
