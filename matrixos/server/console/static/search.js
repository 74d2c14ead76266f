// The search playground: a Lance table, a query, vector / text / hybrid, a filter → ranked rows
// with scores, matched words highlighted, image bytes shown as thumbnails.
import { query, ident, literal } from "./api.js";
import { h, clear, errorBox } from "./dom.js";
import { tree, tableNames } from "./app.js";

const IMAGE_MAGIC = { "89504e47": "image/png", ffd8ff: "image/jpeg", "47494638": "image/gif", "52494646": "image/webp" };

export async function searchPage(el) {
  const lance = tableNames(await tree()).filter((x) => x.format === "lance");
  const pick = h("select", { "aria-label": "table" }, lance.map((x) => h("option", { value: x.full_name }, x.full_name)));
  const q = h("input", { type: "search", placeholder: "query", "aria-label": "query", required: true });
  const mode = h("select", { "aria-label": "mode" }, ["hybrid", "vector", "text"].map((m) => h("option", {}, m)));
  const k = h("input", { type: "number", min: 1, max: 1000, value: 10, "aria-label": "k" });
  const filter = h("input", { placeholder: "filter, e.g. lang = 'en'", "aria-label": "filter" });
  const out = h("div", { class: "hits" });
  const form = h("form", { class: "row" }, pick, q, mode, k, filter, h("button", { type: "submit", class: "primary" }, "Search"));
  el.append(h("h2", {}, "Search"), lance.length ? form : h("p", { class: "empty" }, "No Lance table you may read."), out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(out).append("searching…");
    const args = [ident(pick.value), literal(q.value), `k => ${Math.max(1, Number(k.value) | 0)}`];
    if (filter.value.trim()) args.push(`filter => ${literal(filter.value.trim())}`);
    try {
      const rows = await query(`SELECT * FROM ${mode.value}_search(${args.join(", ")}) ORDER BY _score DESC`);
      clear(out).append(rows.length ? hits(rows, q.value) : h("p", { class: "empty" }, "No match."));
    } catch (err) { clear(out).append(errorBox(err)); }
  });
}

function hits(rows, text) {
  const words = [...new Set(text.toLowerCase().match(/[\p{L}\p{N}_]{2,}/gu) || [])];
  const cols = Object.keys(rows[0]).filter((c) => c !== "_score" && !/vector|embedding/i.test(c));
  return h("ol", { class: "hit-list" }, rows.map((r) => h("li", {},
    h("span", { class: "score" }, Number(r._score).toFixed(4)),
    h("dl", {}, cols.map((c) => [h("dt", {}, c), h("dd", {}, value(r[c], words))])))));
}

function value(v, words) {
  if (v === null) return h("span", { class: "null" }, "NULL");
  const img = image(v);
  if (img) return img;
  return highlight(v.length > 600 ? v.slice(0, 600) + "…" : v, words);
}

// Binary cells arrive as hex: an image's bytes become a blob URL for an <img>.
function image(v) {
  if (!/^[0-9a-f]+$/.test(v) || v.length < 16 || v.length % 2) return null;
  const type = Object.entries(IMAGE_MAGIC).find(([m]) => v.startsWith(m));
  if (!type) return h("span", { class: "muted" }, `${v.length / 2} bytes`);
  const bytes = new Uint8Array(v.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(v.substr(i * 2, 2), 16);
  return h("img", { class: "thumb", alt: "thumbnail", src: URL.createObjectURL(new Blob([bytes], { type: type[1] })) });
}

function highlight(text, words) {
  if (!words.length) return text;
  const re = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "giu");
  return h("span", {}, text.split(re).map((part, i) => (i % 2 ? h("mark", {}, part) : part)));
}
