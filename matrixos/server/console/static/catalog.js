// The catalog explorer: catalogs → schemas → tables and volumes; a table's columns, properties,
// size and files, preview, history with time travel and row-count diff, indexes, grants.
import { get, query, ident, ApiError } from "./api.js";
import { h, clear, table, errorBox, bytes } from "./dom.js";
import { tree } from "./app.js";
import { runLater } from "./sql.js";

const PRIVILEGES = ["SELECT", "MODIFY", "MANAGE", "ALL PRIVILEGES"];

export async function catalogPage(el, rest, state) {
  const side = h("nav", { class: "tree", "aria-label": "catalog tree" });
  const detail = h("div", { class: "detail" });
  el.append(h("div", { class: "catalog-page" }, side, detail));
  const t = await tree(true);
  if (!t.catalogs.length) side.append(h("p", { class: "empty" }, "Nothing you may read yet: ask an owner or admin for a grant."));
  for (const c of t.catalogs) {
    side.append(h("details", { open: true }, h("summary", {}, c.name), c.schemas.map((s) =>
      h("details", { open: true }, h("summary", {}, s.name),
        h("ul", {}, s.tables.map((x) => h("li", {}, h("a", { href: `#/catalog/${encodeURIComponent(x.full_name)}` }, x.name), h("small", {}, ` ${x.format}`))),
          s.volumes.map((v) => h("li", { class: "volume" }, v.name, h("small", {}, " volume"))))))));
  }
  if (rest[0]) await showTable(detail, rest[0], state);
  else detail.append(h("p", { class: "empty" }, "Pick a table."));
}

async function showTable(el, name, state) {
  let d;
  try { d = await get(`/api/2.0/matrixos/tables/${encodeURIComponent(name)}`); }
  catch (e) { el.append(errorBox(e)); return; }
  const tabs = ["Columns", "Preview", "History", "Details", "Indexes", "Grants", "Lineage"];
  const body = h("div", { class: "tab-body" });
  const bar = h("div", { class: "tabs", role: "tablist" }, tabs.map((tab) => h("button", { type: "button", role: "tab", onclick: () => open(tab) }, tab)));
  el.append(h("h2", {}, d.name), h("p", { class: "muted" }, `${d.format} · version ${d.version ?? "?"} · owner ${d.owner ?? "?"}${d.comment ? " · " + d.comment : ""}`), bar, body);
  async function open(tab) {
    [...bar.children].forEach((b) => b.classList.toggle("on", b.textContent === tab));
    clear(body);
    try { await VIEWS[tab](body, d, state); } catch (e) { body.append(errorBox(e)); }
  }
  open("Columns");
}

const VIEWS = {
  async Columns(el, d) {
    el.append(table(["column", "type"], Object.entries(d.schema || {}).map(([column, type]) => ({ column, type }))));
  },
  async Preview(el, d) {
    const rows = await query(`SELECT * FROM ${ident(d.name)} LIMIT 50`);
    el.append(rows.length ? table(Object.keys(rows[0]), rows) : h("p", { class: "empty" }, "No rows."));
  },
  async History(el, d) {
    const { history } = await get(`/api/2.0/matrixos/tables/${encodeURIComponent(d.name)}/history?limit=100`);
    const diff = h("div", { class: "diff", role: "status" });
    const rows = history.map((c) => {
      const m = c.operationMetrics || {};
      return {
        version: c.version, time: c.timestamp ? new Date(c.timestamp).toISOString() : "",
        operation: c.operation ?? "", user: c.userName || c.user || c.principal || "—",
        rows: m.num_added_rows ?? m.num_output_rows ?? m.num_inserted_rows ?? m.num_deleted_rows ?? "",
      };
    });
    const cell = (v, col, r) => col !== "actions" ? v : h("span", {},
      h("button", { type: "button", onclick: () => runLater(`SELECT * FROM ${ident(d.name)} VERSION AS OF ${Number(r.version)}`) }, "Time travel"),
      h("button", { type: "button", onclick: () => countDiff(diff, d, Number(r.version)) }, "Diff vs latest"));
    el.append(diff, table(["version", "time", "operation", "user", "rows", "actions"], rows, cell));
  },
  async Details(el, d) {
    const facts = { location: d.location, external: d.external, partition_by: (d.partition_by || []).join(", "),
      files: d.num_files, size: bytes(d.size_bytes), created_at: d.created_at, updated_at: d.updated_at };
    el.append(h("h3", {}, "Size and files"), table(["fact", "value"], Object.entries(facts).map(([fact, value]) => ({ fact, value: String(value ?? "") }))));
    const props = Object.entries(d.properties || {});
    el.append(h("h3", {}, "Properties"), props.length ? table(["key", "value"], props.map(([key, value]) => ({ key, value }))) : h("p", { class: "empty" }, "No properties."));
  },
  async Indexes(el, d) {
    if (d.format !== "lance") { el.append(h("p", { class: "empty" }, "Indexes are kept on Lance tables; this is a Delta table (its files are pruned by statistics instead).")); return; }
    const idx = d.indexes || [];
    el.append(idx.length ? table(Object.keys(idx[0]), idx.map((i) => Object.fromEntries(Object.entries(i).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v])))) : h("p", { class: "empty" }, "No indexes."));
  },
  async Grants(el, d, state) {
    const list = h("div", {});
    async function load() {
      clear(list);
      const rows = await query(`SHOW GRANTS ON TABLE ${ident(d.name)}`);
      const cols = rows.length ? Object.keys(rows[0]) : ["privilege", "grantee"];
      const cell = (v, col, r) => col !== "" ? v : h("button", { type: "button", onclick: () => change(`REVOKE ${r.privilege} ON TABLE ${ident(d.name)} FROM ${ident(r.principal ?? r.grantee)}`) }, "Revoke");
      list.append(rows.length ? table([...cols, ""], rows, cell) : h("p", { class: "empty" }, "No grants on this table."));
    }
    const priv = h("select", { "aria-label": "privilege" }, PRIVILEGES.map((p) => h("option", {}, p)));
    const who = h("input", { placeholder: "account", "aria-label": "grantee" });
    const msg = h("div", {});
    async function change(sql) {
      clear(msg);
      try { await query(sql); await load(); } catch (e) { msg.append(errorBox(e)); }
    }
    el.append(list);
    const mayEdit = state.me.is_admin || d.owner === state.me.name;
    if (mayEdit) el.append(h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); if (who.value.trim()) change(`GRANT ${priv.value} ON TABLE ${ident(d.name)} TO ${ident(who.value.trim())}`); } },
      priv, who, h("button", { type: "submit" }, "Grant")), msg);
    else el.append(h("p", { class: "muted" }, "Only the table's owner and admins change its grants."));
    await load();
  },
  // From system.lineage.events (GET /api/2.0/lineage): what this table was made from, and what
  // was made from it; tables the caller may not read arrive as <hidden>.
  async Lineage(el, d) {
    const { edges } = await get(`/api/2.0/lineage?table=${encodeURIComponent(d.name)}&direction=both&depth=5`);
    const ds = (x) => {
      const label = `${x.name}${x.version !== null && x.version !== undefined ? " v" + x.version : ""}`;
      return x.name === "<hidden>" || x.name === d.name || (x.namespace && x.namespace !== "matrixos")
        ? label : h("a", { href: `#/catalog/${encodeURIComponent(x.name)}` }, label);
    };
    for (const [dir, title] of [["up", "Upstream (made from)"], ["down", "Downstream (made from this)"]]) {
      const rows = edges.filter((e) => e.direction === dir).map((e) => ({
        depth: e.depth, source: ds(e.source), target: ds(e.target), job: e.job ?? "", principal: e.principal ?? "", time: e.event_time ?? "",
      }));
      el.append(h("h3", {}, title), rows.length ? table(["depth", "source", "target", "job", "principal", "time"], rows) : h("p", { class: "empty" }, "None recorded."));
    }
  },
};

async function countDiff(el, d, version) {
  clear(el).append("counting…");
  try {
    const [a] = await query(`SELECT count(*) AS n FROM ${ident(d.name)} VERSION AS OF ${version}`);
    const [b] = await query(`SELECT count(*) AS n FROM ${ident(d.name)}`);
    const delta = Number(b.n) - Number(a.n);
    clear(el).append(`version ${version}: ${a.n} rows · latest: ${b.n} rows · difference ${delta >= 0 ? "+" : ""}${delta}`);
  } catch (e) { clear(el).append(errorBox(e instanceof ApiError ? e : new ApiError(0, { message: String(e) }))); }
}
