// The console's shell: login, the page router (#/sql, #/catalog/…, #/search, #/compute, #/admin).
import { get, post, ApiError } from "./api.js";
import { clear } from "./dom.js";
import { sqlPage } from "./sql.js";
import { catalogPage } from "./catalog.js";
import { searchPage } from "./search.js";
import { computePage } from "./compute.js";
import { adminPage } from "./admin.js";

const PAGES = { sql: sqlPage, catalog: catalogPage, search: searchPage, compute: computePage, admin: adminPage };
export const state = { me: null, tree: null };

const $ = (id) => document.getElementById(id);

async function start() {
  try {
    state.me = await get("/console/api/me");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return showLogin();
    throw e;
  }
  $("login").hidden = true;
  $("top").hidden = false;
  $("who").textContent = `${state.me.name}${state.me.is_admin ? " (admin)" : ""}`;
  window.addEventListener("hashchange", route);
  route();
}

function showLogin() {
  $("top").hidden = true;
  clear($("page"));
  $("login").hidden = false;
}

async function login(fn) {
  $("login-error").textContent = "";
  try {
    await fn();
    $("token").value = ""; $("password").value = "";
    await start();
  } catch (e) {
    $("login-error").textContent = e.status === 429 ? "Too many failed logins: wait and retry." : "Login failed: check the token, or the user and password.";
  }
}

$("login-token").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  login(() => fetch("/console/login", { method: "POST", headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin" })
    .then((r) => { if (!r.ok) throw new ApiError(r.status, {}); }));
});
$("login-password").addEventListener("submit", (e) => {
  e.preventDefault();
  login(() => post("/console/login/password", { user: $("user").value, password: $("password").value }));
});
$("logout").addEventListener("click", async () => {
  await post("/console/logout").catch(() => {});
  state.me = null; state.tree = null;
  window.removeEventListener("hashchange", route);
  showLogin();
});

let current = null;
async function route() {
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "sql").split("/");
  const page = PAGES[name] ? name : "sql";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("on", a.dataset.page === page));
  if (current && current.leave) current.leave();
  const el = clear($("page"));
  el.dataset.page = page;
  current = await PAGES[page](el, rest.map(decodeURIComponent), state);
}

// The catalog tree (cached until refreshed): what the principal may see.
export async function tree(refresh = false) {
  if (!state.tree || refresh) state.tree = await get("/console/api/tree");
  return state.tree;
}

export function tableNames(t) {
  const out = [];
  for (const c of t.catalogs) for (const s of c.schemas) {
    for (const x of s.tables) out.push({ ...x, catalog: c.name, schema: s.name });
  }
  return out;
}

start();
