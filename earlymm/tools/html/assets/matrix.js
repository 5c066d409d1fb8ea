"use strict";
EM.Matrix = class { constructor(parent) { parent.append(EM.el("div", { text: "matrix" })); } };
