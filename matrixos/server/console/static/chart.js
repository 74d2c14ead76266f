// A chart of result rows as SVG: line, bar or scatter of y over x (drawn here, no library).
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// rows: [[x, y], ...] with y numeric (or numeric text); x numeric, time or category.
export function chart(kind, points, { width = 640, height = 260, xLabel = "", yLabel = "" } = {}) {
  const P = { l: 56, r: 12, t: 12, b: 36 };
  const W = width - P.l - P.r, H = height - P.t - P.b;
  const ys = points.map((p) => Number(p[1]));
  const numericX = points.every((p) => p[0] !== null && !isNaN(Number(p[0])));
  const timeX = !numericX && points.every((p) => p[0] && !isNaN(Date.parse(p[0])));
  const xv = points.map((p, i) => (numericX ? Number(p[0]) : timeX ? Date.parse(p[0]) : i));
  const [x0, x1] = [Math.min(...xv), Math.max(...xv)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(0, ...ys)];
  const X = (v) => P.l + (x1 === x0 ? W / 2 : ((v - x0) / (x1 - x0)) * W);
  const Y = (v) => P.t + H - (y1 === y0 ? H / 2 : ((v - y0) / (y1 - y0)) * H);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  svg.append(s("line", { x1: P.l, y1: Y(0), x2: P.l + W, y2: Y(0), class: "axis" }));
  svg.append(s("line", { x1: P.l, y1: P.t, x2: P.l, y2: P.t + H, class: "axis" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) svg.append(s("text", { x: P.l - 4, y: Y(v) + 4, "text-anchor": "end" }, fmt(v)));
  const lab = (i) => String(points[i][0] ?? "");
  [0, Math.floor(points.length / 2), points.length - 1].filter((v, i, a) => points.length && a.indexOf(v) === i)
    .forEach((i) => svg.append(s("text", { x: X(xv[i]), y: P.t + H + 16, "text-anchor": "middle" }, lab(i).slice(0, 19))));
  svg.append(s("text", { x: P.l + W / 2, y: height - 4, "text-anchor": "middle", class: "label" }, xLabel));
  svg.append(s("text", { x: 12, y: P.t + H / 2, transform: `rotate(-90 12 ${P.t + H / 2})`, "text-anchor": "middle", class: "label" }, yLabel));
  const order = xv.map((v, i) => i).sort((a, b) => xv[a] - xv[b]);
  if (kind === "line") {
    svg.append(s("polyline", { class: "series", fill: "none", points: order.map((i) => `${X(xv[i])},${Y(ys[i])}`).join(" ") }));
  } else if (kind === "bar") {
    const bw = Math.min(48, Math.max(1, (W / Math.max(1, points.length)) * 0.8));
    order.forEach((i) => {
      const top = Math.min(Y(ys[i]), Y(0));
      const bar = s("rect", { class: "bar", x: X(xv[i]) - bw / 2, y: top, width: bw, height: Math.abs(Y(ys[i]) - Y(0)) });
      bar.append(s("title", {}, `${lab(i)}: ${ys[i]}`));
      svg.append(bar);
    });
  } else {
    order.forEach((i) => {
      const dot = s("circle", { class: "dot", cx: X(xv[i]), cy: Y(ys[i]), r: 3 });
      dot.append(s("title", {}, `${lab(i)}: ${ys[i]}`));
      svg.append(dot);
    });
  }
  return h("div", { class: "chart-box" }, svg);
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 1e6 || (a > 0 && a < 1e-2) ? v.toExponential(1) : String(Math.round(v * 100) / 100);
}
