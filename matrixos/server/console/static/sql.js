// The SQL editor page: highlight, complete, run / run selection / cancel, paged grid, errors at
// line:column, history, download, chart.
import { Statement, get, query, ApiError } from "./api.js";
import { h, clear, errorBox } from "./dom.js";
import { Editor } from "./editor.js";
import { ResultGrid } from "./grid.js";
import { chart } from "./chart.js";
import { tree, tableNames } from "./app.js";

const DIALECTS = ["duckdb", "postgres", "mysql", "databricks", "spark", "snowflake", "bigquery", "trino", "sqlite"];
let HISTORY_KEY = "mx.console.history";
let pending = null; // SQL another page asked to run (time travel)

export function runLater(sql) { pending = sql; location.hash = "#/sql"; }

export async function sqlPage(el, _rest, state) {
  HISTORY_KEY = `mx.console.history.${state.me.name}`;
  // The names for completion arrive in the background: the editor is usable at once.
  const tables = [], words = [];
  tree().then((t) => {
    tables.push(...tableNames(t));
    words.push(...tables.map((x) => x.full_name), ...tables.map((x) => `${x.schema}.${x.name}`));
    // typed before the names were here: complete the word now, not at the next key
    if (document.activeElement === editor.area) editor.complete(false);
  }).catch(() => {});
  const colCache = new Map();
  async function columnsOf(name) {
    const found = name ? tables.filter((x) => [x.full_name, `${x.schema}.${x.name}`, x.name].includes(name)) : [];
    const names = name ? found.map((x) => x.full_name) : [...colCache.keys()];
    const out = [];
    for (const n of names) {
      if (!colCache.has(n)) colCache.set(n, get(`/api/2.0/matrixos/tables/${encodeURIComponent(n)}`).then((d) => Object.keys(d.schema || {})).catch(() => []));
      out.push(...(await colCache.get(n)));
    }
    return out;
  }
  const editor = new Editor(() => ({ words, columns: columnsOf }));
  const dialect = h("select", { "aria-label": "dialect" }, DIALECTS.map((d) => h("option", { value: d }, d)));
  const runB = h("button", { type: "button", class: "primary", onclick: () => run(false) }, "Run");
  const runSelB = h("button", { type: "button", onclick: () => run(true) }, "Run selection");
  const cancelB = h("button", { type: "button", disabled: true, onclick: () => active && active.cancel() }, "Cancel");
  const status = h("span", { class: "status", role: "status" });
  const out = h("div", { class: "output" });
  const hist = h("ol", { class: "history" });
  el.append(h("div", { class: "sql-page" },
    h("div", { class: "sql-main" },
      h("div", { class: "toolbar" }, runB, runSelB, cancelB, h("label", {}, "Dialect ", dialect), status),
      editor.el, out),
    h("aside", { class: "side" }, h("h3", {}, "History"),
      h("div", { class: "row" },
        h("button", { type: "button", onclick: () => showHistory() }, "This browser"),
        h("button", { type: "button", onclick: () => serverHistory() }, "Server")),
      hist)));
  editor.area.addEventListener("keydown", (e) => { if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); run(false); } });
  editor.value = pending || sessionStorage.getItem("mx.console.sql") || "SELECT 1 AS one";
  editor.area.addEventListener("input", () => sessionStorage.setItem("mx.console.sql", editor.value));
  showHistory();

  let active = null;
  async function run(selectionOnly) {
    const text = selectionOnly ? editor.selection() || editor.value : editor.value;
    if (!text.trim()) return;
    // An error's line/column counts from the start of what ran: shift it for a selection.
    const before = selectionOnly && editor.selection() ? editor.value.slice(0, editor.area.selectionStart) : "";
    const lineShift = before.split("\n").length - 1;
    const colShift = before.length - before.lastIndexOf("\n") - 1; // on the selection's first line
    const st = (active = new Statement(text, { dialect: dialect.value }));
    runB.disabled = runSelB.disabled = true; cancelB.disabled = false;
    clear(out); editor.markError(null);
    const t0 = performance.now();
    status.textContent = "running…";
    remember(text);
    try {
      const body = await st.run((s) => { status.textContent = `${s.toLowerCase()}… ${((performance.now() - t0) / 1000).toFixed(1)} s`; });
      const secs = ((performance.now() - t0) / 1000).toFixed(2);
      if (body.status.state === "SUCCEEDED") {
        status.textContent = `${body.status.state.toLowerCase()} in ${secs} s`;
        show(st, body);
      } else if (body.status.state === "CANCELED") {
        status.textContent = `canceled after ${secs} s`;
        out.append(h("div", { class: "notice" }, "The statement was canceled."));
      } else {
        status.textContent = `${body.status.state.toLowerCase()} after ${secs} s`;
        fail(body.status.error || {}, lineShift, colShift);
      }
    } catch (e) {
      status.textContent = "failed";
      if (e instanceof ApiError) fail(e.body, lineShift, colShift); else out.append(errorBox(e));
    } finally {
      active = null;
      runB.disabled = runSelB.disabled = false; cancelB.disabled = true;
    }
  }
  function fail(err, lineShift, colShift) {
    const line = err.line ? err.line + lineShift : err.line;
    const column = err.line === 1 && err.column ? err.column + colShift : err.column;
    out.append(errorBox(new ApiError(400, { ...err, line, column })));
    if (line) editor.markError(line, column);
  }
  function show(st, body) {
    if (!body.manifest) return;
    const grid = new ResultGrid(st, body, { onPage: () => drawChart() });
    const cols = body.manifest.schema.columns;
    const pick = (label, dflt) => h("select", { "aria-label": label }, cols.map((c, i) => h("option", { value: i, selected: i === dflt }, c.name)));
    const xSel = pick("x column", 0);
    const ySel = pick("y column", Math.min(1, cols.length - 1));
    const kind = h("select", { "aria-label": "chart kind" }, ["line", "bar", "scatter"].map((k) => h("option", { value: k }, k)));
    const chartBox = h("div", { class: "chart-area" });
    function drawChart() {
      clear(chartBox);
      if (chartBox.hidden) return;
      const x = Number(xSel.value), y = Number(ySel.value);
      const pts = grid.rows.map((r) => [r[x], r[y]]).filter((p) => p[1] !== null && !isNaN(Number(p[1])));
      chartBox.append(pts.length ? chart(kind.value, pts, { xLabel: cols[x].name, yLabel: cols[y].name }) : h("p", {}, "The y column has no numbers on this page."));
    }
    chartBox.hidden = true;
    const chartB = h("button", { type: "button", onclick: () => { chartBox.hidden = !chartBox.hidden; drawChart(); } }, "Chart");
    [xSel, ySel, kind].forEach((s) => s.addEventListener("change", drawChart));
    const dl = (fmt) => h("a", { class: "button", href: `/console/api/statements/${encodeURIComponent(st.id)}/download?format=${fmt}`, download: "" }, fmt.toUpperCase());
    out.append(h("div", { class: "toolbar" }, h("span", {}, "Download "), dl("csv"), dl("parquet"), chartB,
      h("label", {}, " x ", xSel), h("label", {}, " y ", ySel), kind), chartBox, grid.el);
    grid.show(0);
  }
  function remember(text) {
    const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]").filter((q) => q !== text);
    list.unshift(text);
    localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, 50)));
    showHistory();
  }
  function showHistory() {
    clear(hist);
    for (const q of JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]")) {
      hist.append(h("li", {}, h("a", { href: "#/sql", title: q, onclick: (e) => { e.preventDefault(); editor.value = q; } }, q.length > 80 ? q.slice(0, 80) + "…" : q)));
    }
  }
  // system.query.history: every statement of this principal on the server (literals blanked).
  async function serverHistory() {
    clear(hist).append("loading…");
    try {
      const rows = await query("SELECT start_time, state, duration_ms, statement FROM system.query.history ORDER BY start_time DESC LIMIT 50");
      clear(hist);
      for (const r of rows) {
        hist.append(h("li", { class: r.state === "SUCCEEDED" ? "" : "failed" },
          h("small", {}, `${r.start_time ?? ""} · ${r.state} · ${Math.round(Number(r.duration_ms) || 0)} ms`), h("br"),
          h("a", { href: "#/sql", title: r.statement, onclick: (e) => { e.preventDefault(); editor.value = r.statement; } }, (r.statement || "").slice(0, 80))));
      }
      if (!rows.length) hist.append(h("p", { class: "empty" }, "No statements recorded yet (they arrive within a second or two)."));
    } catch (e) { clear(hist).append(errorBox(e)); }
  }
  if (pending) { pending = null; run(false); }
  return { leave() { if (active) active.cancel(); } };
}
