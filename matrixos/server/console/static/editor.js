// A small SQL editor: a textarea under a highlighted copy of its text, a completion popup of
// keywords and catalog/schema/table/column names, and an error marker at a line and column.
import { h, clear } from "./dom.js";

export const KEYWORDS = (
  "select from where group by order having limit offset join left right full inner outer cross on " +
  "using as and or not in is null like ilike between case when then else end distinct union all " +
  "except intersect with insert into values update set delete create table view schema drop alter " +
  "grant revoke to show describe explain version of timestamp asc desc true false cast over " +
  "partition window qualify count sum avg min max merge matched users groups grants user group"
).split(" ");
const KW = new Set(KEYWORDS);
const TOKEN = /(--[^\n]*|\/\*[\s\S]*?(?:\*\/|$))|('(?:[^']|'')*'?)|("(?:[^"]|"")*"?)|(\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b)|([A-Za-z_][A-Za-z0-9_$]*)|(\s+|.)/gi;

// The text as [class, text] pieces (comment, string, ident, number, keyword, plain).
export function tokens(text) {
  const out = [];
  for (const m of text.matchAll(TOKEN)) {
    const [t, comment, str, quoted, num, word] = m;
    const kind = comment ? "cmt" : str ? "str" : quoted ? "qid" : num ? "num"
      : word ? (KW.has(word.toLowerCase()) ? "kw" : "id") : "";
    out.push([kind, t]);
  }
  return out;
}

export class Editor {
  // names(): {words: [...], columns(table) -> Promise<[...]>} supplies completion candidates.
  constructor(names) {
    this.names = names;
    this.area = h("textarea", { class: "sql-input", spellcheck: "false", "aria-label": "SQL" });
    this.shade = h("pre", { class: "sql-shade", "aria-hidden": "true" });
    this.popup = h("ul", { class: "completion", hidden: true, role: "listbox" });
    this.el = h("div", { class: "editor" }, this.shade, this.area, this.popup);
    this.mark = null;
    this.area.addEventListener("input", () => { this.mark = null; this.paint(); this.complete(false); });
    this.area.addEventListener("scroll", () => { this.shade.scrollTop = this.area.scrollTop; this.shade.scrollLeft = this.area.scrollLeft; });
    this.area.addEventListener("keydown", (e) => this.key(e));
    this.area.addEventListener("blur", () => setTimeout(() => this.hide(), 150));
  }
  get value() { return this.area.value; }
  set value(v) { this.area.value = v; this.mark = null; this.paint(); }
  selection() {
    const { selectionStart: a, selectionEnd: b } = this.area;
    return a !== b ? this.area.value.slice(a, b) : "";
  }
  // Mark line/column (1-based) of the text as the place of an error.
  markError(line, col) { this.mark = line ? { line, col: col || 1 } : null; this.paint(); }
  paint() {
    clear(this.shade);
    const lines = [[]];
    for (const [kind, text] of tokens(this.area.value + "\n")) {
      const parts = text.split("\n");
      parts.forEach((p, i) => {
        if (i > 0) lines.push([]);
        if (p) lines[lines.length - 1].push(kind ? h("span", { class: kind }, p) : document.createTextNode(p));
      });
    }
    lines.forEach((nodes, i) => {
      const bad = this.mark && this.mark.line === i + 1;
      this.shade.append(h("div", { class: bad ? "line bad" : "line", title: bad ? `error at column ${this.mark.col}` : null }, nodes.length ? nodes : "\u200b"));
    });
    this.shade.scrollTop = this.area.scrollTop;
  }
  // The word being typed before the caret (with its dotted prefix: "sales.or").
  word() {
    const before = this.area.value.slice(0, this.area.selectionStart);
    const m = before.match(/[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*\.?$/);
    return m ? m[0] : "";
  }
  async complete(force) {
    const call = (this.calls = (this.calls || 0) + 1); // only the latest call shows its answer
    const w = this.word();
    if (!force && (w.length < 2 && !w.endsWith("."))) return this.hide();
    const dot = w.lastIndexOf(".");
    const prefix = w.slice(dot + 1).toLowerCase();
    let cands = [];
    if (dot >= 0) {
      const head = w.slice(0, dot);
      cands = (this.names().words.filter((n) => n.toLowerCase().startsWith(head.toLowerCase() + "."))
        .map((n) => n.slice(head.length + 1).split(".")[0]));
      cands = cands.concat(await this.names().columns(head));
    } else {
      const words = this.names().words.flatMap((n) => n.split("."));
      const cols = await this.names().columns(null);
      cands = KEYWORDS.map((k) => k.toUpperCase()).concat(words, cols);
    }
    if (call !== this.calls) return; // a later key asked again while this one waited
    cands = [...new Set(cands)].filter((c) => c.toLowerCase().startsWith(prefix) && c.toLowerCase() !== prefix).slice(0, 30);
    if (!cands.length) return this.hide();
    clear(this.popup);
    cands.forEach((c, i) => this.popup.append(h("li", { role: "option", class: i === 0 ? "on" : "", onmousedown: (e) => { e.preventDefault(); this.accept(c); } }, c)));
    this.popup.hidden = false;
    this.prefix = prefix;
  }
  hide() { this.popup.hidden = true; }
  accept(text) {
    const a = this.area.selectionStart;
    const start = a - (this.prefix || "").length;
    this.area.setRangeText(text, start, a, "end");
    this.hide(); this.paint();
    this.area.focus();
  }
  key(e) {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { this.hide(); return; }
    if (e.ctrlKey && e.key === " ") { e.preventDefault(); this.complete(true); return; }
    if (this.popup.hidden) return;
    const items = [...this.popup.children];
    const on = items.findIndex((li) => li.classList.contains("on"));
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const next = (on + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items.forEach((li, i) => li.classList.toggle("on", i === next));
    } else if (e.key === "Enter" || e.key === "Tab") {
      e.preventDefault(); this.accept(items[Math.max(on, 0)].textContent);
    } else if (e.key === "Escape") this.hide();
  }
}
