// Compute: the pool's nodes, the job queue (positions, ETAs), a job's logs, submitting a SQL job,
// reserving GPUs (the earliest free window shown when refused), usage per account and balances.
import { get, getText, post, ApiError } from "./api.js";
import { h, clear, table, errorBox, bytes } from "./dom.js";
import { chart } from "./chart.js";

const JOBS = "/api/2.0/jobs";

// Epoch seconds (the jobs API's times) or ISO text, as ISO text.
function when(v) {
  if (v === null || v === undefined || v === "") return null;
  return typeof v === "number" ? new Date(v * 1000).toISOString().replace(".000Z", "Z") : String(v);
}

export async function computePage(el) {
  const nodes = h("section", {}, h("h2", {}, "Nodes"));
  const jobs = h("section", {}, h("h2", {}, "Jobs"));
  const reserve = h("section", {}, h("h2", {}, "Reserve GPUs"));
  const usage = h("section", {}, h("h2", {}, "Usage and credit"));
  el.append(nodes, jobs, reserve, usage);
  await Promise.all([showNodes(nodes), showJobs(jobs), showReserve(reserve), showUsage(usage)]);
  return { leave() { clearTimeout(timer); } };
}

let timer = null;

async function showNodes(el) {
  try {
    const s = await get("/console/api/nodes");
    el.append(h("p", { class: "muted" }, `${s.mode} pool · ${s.cpus} CPUs · ${s.gpus} GPUs${s.address ? " · " + s.address : ""}`));
    el.append(table(["address", "alive", "cpus", "cpus_free", "gpus", "gpus_free", "accelerator", "zone", "memory"],
      s.nodes.map((n) => ({ ...n, alive: n.alive ? "yes" : "no", memory: bytes(n.memory_bytes) })), (v) => v ?? "—"));
  } catch (e) { el.append(errorBox(e)); }
}

function jobsMissing(el, e) {
  if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
    el.append(h("p", { class: "empty" }, "This server has no jobs API (/api/2.0/jobs): the queue, logs and submitting need it."));
    return true;
  }
  return false;
}

async function showJobs(el) {
  const list = h("div", {});
  const logs = h("pre", { class: "logs", hidden: true });
  const sql = h("textarea", { class: "job-sql", "aria-label": "job SQL", placeholder: "SQL to run as a job" });
  const account = h("input", { placeholder: "account (default: you)", "aria-label": "account" });
  const msg = h("div", {});
  const form = h("form", { class: "row" }, sql, account, h("button", { type: "submit", class: "primary" }, "Submit SQL job"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault(); clear(msg);
    try {
      const body = { sql: sql.value, name: "console" };
      if (account.value.trim()) body.account = account.value.trim();
      const j = await post(JOBS, body);
      msg.append(h("p", { class: "notice" }, `submitted job ${j.id}`));
      await load();
    } catch (err) { if (!jobsMissing(msg, err)) msg.append(errorBox(err)); }
  });
  el.append(form, msg, list, logs);
  async function load() {
    clearTimeout(timer);
    let rows;
    try { rows = await get(`${JOBS}?limit=100`); } catch (e) { clear(list); if (!jobsMissing(list, e)) list.append(errorBox(e)); return; }
    const items = Array.isArray(rows) ? rows : rows.jobs || [];
    const cell = (v, col, r) => col !== "" ? (v ?? "—") : h("span", {},
      h("button", { type: "button", onclick: () => showLogs(r.id) }, "Logs"),
      ["QUEUED", "RUNNING", "PENDING"].includes(r.state) ? h("button", { type: "button", onclick: () => post(`${JOBS}/${encodeURIComponent(r.id)}/cancel`).then(load) }, "Cancel") : null);
    const shown = items.map((r) => ({ ...r, eta: when(r.eta), submitted_at: when(r.submitted_at), gpus: r.gpus ?? (r.spec && r.spec.gpus) }));
    clear(list).append(shown.length ? table(["id", "name", "state", "account", "position", "eta", "submitted_at", "gpus", "exit_code", ""], shown, cell) : h("p", { class: "empty" }, "No jobs."));
    if (items.some((r) => !["SUCCEEDED", "FAILED", "CANCELED"].includes(r.state))) timer = setTimeout(load, 1000);
  }
  async function showLogs(id) {
    logs.hidden = false;
    logs.dataset.job = id;
    try { logs.textContent = (await getText(`${JOBS}/${encodeURIComponent(id)}/logs?tail=500`)) || "(no output yet)"; }
    catch (e) { logs.textContent = e.message; }
  }
  await load();
}

async function showReserve(el) {
  const gpus = h("input", { type: "number", min: 1, value: 1, "aria-label": "gpus" });
  const accel = h("input", { placeholder: "accelerator (any)", "aria-label": "accelerator" });
  const start = h("input", { type: "datetime-local", "aria-label": "start" });
  const duration = h("input", { value: "1h", "aria-label": "duration" });
  const msg = h("div", { role: "status" });
  const form = h("form", { class: "row" }, h("label", {}, "GPUs ", gpus), accel, start, duration, h("button", { type: "submit" }, "Reserve"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault(); clear(msg);
    const when = start.value ? new Date(start.value).toISOString() : new Date().toISOString();
    try {
      const r = await post("/api/2.0/reservations", { gpus: Number(gpus.value), accelerator: accel.value || null, start: when, duration: duration.value });
      msg.append(h("p", { class: "notice" }, `reserved ${r.id ?? ""}`));
    } catch (err) {
      if (jobsMissing(msg, err)) return;
      const earliest = err.body && err.body.earliest;
      msg.append(errorBox(err));
      if (earliest) msg.append(h("p", { class: "notice" }, `Earliest free window starts ${new Date(Number(earliest) * 1000 || earliest).toISOString()}`));
    }
  });
  el.append(form, msg);
}

async function showUsage(el) {
  try {
    const [{ rows }, { accounts }, perJob] = await Promise.all([
      get("/api/2.0/billing/usage?by=day"), get("/api/2.0/billing/accounts"), get("/api/2.0/billing/usage?by=job")]);
    el.append(h("h3", {}, "Prepaid balances"), accounts.length ? table(["account", "credited", "consumed", "balance"], accounts) : h("p", { class: "empty" }, "No credit recorded."));
    // Rows come per (day, account, resource): summed per account and day.
    const byAccount = new Map();
    for (const r of rows) {
      if (!byAccount.has(r.account)) byAccount.set(r.account, new Map());
      const days = byAccount.get(r.account);
      days.set(r.period, (days.get(r.period) || 0) + Number(r.degrees));
    }
    el.append(h("h3", {}, "Usage per day (degrees)"));
    if (!byAccount.size) el.append(h("p", { class: "empty" }, "No usage recorded yet."));
    for (const [acct, days] of byAccount) {
      const pts = [...days.entries()];
      el.append(h("h4", {}, acct), chart(pts.length > 1 ? "line" : "bar", pts, { xLabel: "day", yLabel: "degrees" }));
    }
    const jobs = new Map();
    for (const r of perJob.rows) {
      const key = `${r.job}\u0000${r.account}`;
      const j = jobs.get(key) || { job: r.job === "sql" ? "(statements)" : r.job, account: r.account, start: r.start, degrees: 0 };
      j.degrees += Number(r.degrees);
      jobs.set(key, j);
    }
    const last = [...jobs.values()].sort((a, b) => String(b.start).localeCompare(String(a.start))).slice(0, 20);
    el.append(h("h3", {}, "Usage per job (degrees)"), last.length
      ? table(["job", "account", "start", "degrees"], last.map((j) => ({ ...j, degrees: j.degrees.toPrecision(4) })))
      : h("p", { class: "empty" }, "No usage recorded yet."));
  } catch (e) { el.append(errorBox(e)); }
}
