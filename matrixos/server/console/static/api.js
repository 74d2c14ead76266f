// Calls to the server: the session cookie authenticates, the CSRF cookie is echoed on writes.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)mxs_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

export async function call(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const get = (p) => call("GET", p);
export async function getText(p) {
  const r = await fetch(p, { credentials: "same-origin" });
  const text = await r.text();
  if (!r.ok) { let b = {}; try { b = JSON.parse(text); } catch { b = { message: text }; } throw new ApiError(r.status, b); }
  return text;
}
export const post = (p, b) => call("POST", p, b === undefined ? {} : b);
export const del = (p) => call("DELETE", p);

const STATEMENTS = "/api/2.0/sql/statements";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A running statement: submit at once (wait 0s), poll until it ends; cancel() stops it.
export class Statement {
  constructor(sql, { dialect = "duckdb", parameters = [] } = {}) {
    this.sql = sql; this.dialect = dialect; this.parameters = parameters;
    this.id = null; this.canceled = false; this.body = null;
  }
  async run(onState) {
    let body = await post(STATEMENTS, {
      statement: this.sql, dialect: this.dialect, parameters: this.parameters,
      wait_timeout: "0s", on_wait_timeout: "CONTINUE", format: "JSON_ARRAY",
    }).catch((e) => { if (e.body && e.body.statement_id) return e.body; throw e; });
    this.id = body.statement_id;
    if (this.canceled) await this.cancel();
    let pause = 5;
    while (["PENDING", "RUNNING"].includes(body.status.state)) {
      if (onState) onState(body.status.state);
      await sleep(pause);
      pause = Math.min(pause * 1.5, 400);
      body = await get(`${STATEMENTS}/${this.id}`);
    }
    this.body = body;
    return body;
  }
  async cancel() {
    this.canceled = true;
    if (this.id) await post(`${STATEMENTS}/${this.id}/cancel`).catch(() => {});
  }
  chunk(n) { return get(`${STATEMENTS}/${this.id}/result/chunks/${n}`); }
}

// Run SQL to its end; the rows of a small result as objects (throws ApiError-like on failure).
export async function query(sql, parameters = []) {
  const st = new Statement(sql, { parameters });
  const body = await st.run();
  if (body.status.state !== "SUCCEEDED") throw new ApiError(400, body.status.error || { message: body.status.state });
  const cols = body.manifest.schema.columns.map((c) => c.name);
  const rows = [];
  for (let i = 0; i < body.manifest.total_chunk_count; i++) {
    const chunk = i === 0 ? body.result : await st.chunk(i);
    for (const r of chunk.data_array || []) rows.push(Object.fromEntries(cols.map((c, j) => [c, r[j]])));
  }
  post(`${STATEMENTS}/${st.id}/cancel`).catch(() => {});
  return rows;
}

// Identifiers in SQL: each part double-quoted ("" inside), never pasted raw.
export function ident(name) {
  return name.split(".").map((p) => `"${p.replaceAll('"', '""')}"`).join(".");
}
export function literal(text) { return `'${String(text).replaceAll("'", "''")}'`; }
