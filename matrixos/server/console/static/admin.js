// Admin: users and groups (SHOW USERS / SHOW GROUPS, CREATE USER…), API tokens (a new one is
// shown once) and the audit log with filters.
import { get, post, del, query, ident } from "./api.js";
import { h, clear, table, errorBox } from "./dom.js";

export async function adminPage(el, _rest, state) {
  const accounts = h("section", {}, h("h2", {}, "Users and groups"));
  const tokens = h("section", {}, h("h2", {}, "API tokens"));
  const audit = h("section", {}, h("h2", {}, "Audit log"));
  el.append(accounts, tokens, audit);
  if (state.me.is_admin) await showAccounts(accounts); else accounts.append(h("p", { class: "muted" }, "Only admins manage accounts."));
  await showTokens(tokens, state);
  if (state.me.is_admin) await showAudit(audit); else audit.append(h("p", { class: "muted" }, "Only admins read the audit log."));
}

async function showAccounts(el) {
  const list = h("div", {});
  const msg = h("div", {});
  const name = h("input", { placeholder: "name", "aria-label": "account name" });
  const kind = h("select", { "aria-label": "kind" }, h("option", {}, "USER"), h("option", {}, "GROUP"));
  const group = h("input", { placeholder: "group", "aria-label": "group" });
  const member = h("input", { placeholder: "user", "aria-label": "member" });
  async function run(sql) { clear(msg); try { await query(sql); await load(); } catch (e) { msg.append(errorBox(e)); } }
  async function load() {
    clear(list);
    for (const what of ["USERS", "GROUPS"]) {
      const rows = await query(`SHOW ${what}`);
      list.append(h("h3", {}, what.toLowerCase()), rows.length ? table(Object.keys(rows[0]), rows) : h("p", { class: "empty" }, "none"));
    }
  }
  el.append(
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); run(`CREATE ${kind.value} ${ident(name.value.trim())}`); } }, kind, name, h("button", { type: "submit" }, "Create")),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); run(`ALTER GROUP ${ident(group.value.trim())} ADD USER ${ident(member.value.trim())}`); } }, group, member, h("button", { type: "submit" }, "Add to group")),
    msg, list);
  await load();
}

async function showTokens(el, state) {
  const list = h("div", {});
  const shown = h("div", { role: "status" });
  const account = h("input", { placeholder: `account (default ${state.me.name})`, "aria-label": "token account" });
  const expires = h("input", { placeholder: "expires in, e.g. 30d", "aria-label": "expires in" });
  async function load() {
    const { tokens } = await get("/console/api/tokens");
    const cell = (v, col, r) => col !== "" ? (v ?? "—") : r.revoked_at ? "" : h("button", { type: "button", onclick: async () => { await del(`/console/api/tokens/${encodeURIComponent(r.id)}`); await load(); } }, "Revoke");
    clear(list).append(table(["id", "account", "created_at", "expires_at", "revoked_at", "last_used_at", ""], tokens, cell));
  }
  el.append(h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault(); clear(shown);
    try {
      const t = await post("/console/api/tokens", { account: account.value.trim() || null, expires_in: expires.value.trim() || null });
      shown.append(h("p", { class: "notice" }, "Copy this token now: it is not shown again."), h("code", { class: "token" }, t.token));
      await load();
    } catch (err) { shown.append(errorBox(err)); }
  } }, account, expires, h("button", { type: "submit" }, "Create token")), shown, list);
  await load();
}

async function showAudit(el) {
  const who = h("input", { placeholder: "principal", "aria-label": "audit principal" });
  const action = h("input", { placeholder: "action, e.g. LOGIN", "aria-label": "audit action" });
  const since = h("input", { type: "date", "aria-label": "since" });
  const out = h("div", {});
  async function load() {
    // The filters are statement parameters, never pasted into the SQL.
    const where = [], params = [];
    const add = (cond, name, value) => { where.push(cond); params.push({ name, value }); };
    if (who.value.trim()) add("principal = :who", "who", who.value.trim());
    if (action.value.trim()) add("action = :action", "action", action.value.trim().toUpperCase());
    if (since.value) add("event_time >= CAST(:since AS TIMESTAMP)", "since", since.value);
    clear(out).append("loading…");
    try {
      const rows = await query(`SELECT event_time, principal, action, object, outcome, protocol, client_address FROM system.access.audit ${where.length ? "WHERE " + where.join(" AND ") : ""} ORDER BY event_time DESC LIMIT 200`, params);
      clear(out).append(rows.length ? table(Object.keys(rows[0]), rows) : h("p", { class: "empty" }, "No events."));
    } catch (e) { clear(out).append(errorBox(e)); }
  }
  el.append(h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); load(); } }, who, action, since, h("button", { type: "submit" }, "Filter")), out);
  await load();
}
