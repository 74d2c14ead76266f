// A result grid that pages through a statement's chunks: only one page of rows is ever in the
// DOM, and only the chunk holding it (plus the one before) is kept in memory.
import { h, clear } from "./dom.js";

export const PAGE_ROWS = 100;

export class ResultGrid {
  constructor(statement, body, { onPage } = {}) {
    this.st = statement;
    this.manifest = body.manifest;
    this.columns = body.manifest.schema.columns;
    this.total = body.manifest.total_row_count;
    this.chunks = new Map([[0, body.result]]);
    this.page = 0;
    this.onPage = onPage;
    this.info = h("span", { class: "page-info" });
    this.prevB = h("button", { type: "button", onclick: () => this.show(this.page - 1) }, "‹ Prev");
    this.nextB = h("button", { type: "button", onclick: () => this.show(this.page + 1) }, "Next ›");
    this.body = h("div", { class: "grid-wrap" });
    this.el = h("div", { class: "result" }, h("div", { class: "pager" }, this.prevB, this.info, this.nextB), this.body);
    this.rows = [];
  }
  get pages() { return Math.max(1, Math.ceil(this.total / PAGE_ROWS)); }
  async rowsAt(offset, count) {
    const out = [];
    const chunks = this.manifest.chunks || [];
    let i = chunks.findIndex((c) => c.row_offset <= offset && offset < c.row_offset + c.row_count);
    while (i >= 0 && i < chunks.length && out.length < count) {
      if (!this.chunks.has(i)) {
        this.chunks.set(i, await this.st.chunk(i));
        for (const k of this.chunks.keys()) if (k !== i && k !== i - 1 && k !== 0) this.chunks.delete(k);
      }
      const data = this.chunks.get(i).data_array || [];
      const from = Math.max(0, offset + out.length - chunks[i].row_offset);
      out.push(...data.slice(from, from + count - out.length));
      i++;
    }
    return out;
  }
  async show(page) {
    page = Math.min(Math.max(0, page), this.pages - 1);
    this.page = page;
    const offset = page * PAGE_ROWS;
    this.rows = await this.rowsAt(offset, PAGE_ROWS);
    clear(this.body).append(h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, h("th", { class: "rownum" }, "#"), this.columns.map((c) =>
        h("th", { title: c.type_text }, c.name, h("small", { class: "type" }, c.type_name))))),
      h("tbody", {}, this.rows.map((r, i) => h("tr", {}, h("td", { class: "rownum" }, offset + i + 1),
        r.map((v) => h("td", { class: v === null ? "null" : "" }, v === null ? "NULL" : v)))))));
    const last = Math.min(this.total, offset + this.rows.length);
    this.info.textContent = this.total ? `rows ${offset + 1}–${last} of ${this.total.toLocaleString("en")}${this.manifest.truncated ? " (truncated)" : ""} · page ${page + 1}/${this.pages}` : "no rows";
    this.prevB.disabled = page === 0;
    this.nextB.disabled = page >= this.pages - 1;
    if (this.onPage) this.onPage(this);
  }
}
