// What every page shares: the API client (with the logged-in key), translations, the hash router,
// formatting, and the few widgets (table, tabs, modal, form field, toast) the pages are built from.
import { html, useState, useEffect, useRef, useCallback } from "./vendor/preact-htm.module.js";

export { html, useState, useEffect, useRef, useCallback };

// ---- key and language, kept in this browser only ----
const KEY = "tideserve.key";
const LANG = "tideserve.lang";
const listeners = new Set();
const notify = () => listeners.forEach((f) => f());

export const session = {
  get key() { return localStorage.getItem(KEY); },
  login(key) { localStorage.setItem(KEY, key); notify(); },
  logout() { localStorage.removeItem(KEY); notify(); },
  get lang() {
    const saved = localStorage.getItem(LANG);
    if (saved) return saved;
    return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  },
  setLang(lang) { localStorage.setItem(LANG, lang); document.documentElement.lang = lang; notify(); },
};

// Re-render on login, logout and language change.
export function useSession() {
  const [, tick] = useState(0);
  useEffect(() => {
    const f = () => tick((n) => n + 1);
    listeners.add(f);
    return () => listeners.delete(f);
  }, []);
  return session;
}

// ---- translations: each page registers its own strings ----
const strings = { en: {}, zh: {} };
export function register(dict) {
  for (const lang of ["en", "zh"]) Object.assign(strings[lang], dict[lang] || {});
}
// t("key", {n: 3}) → the string in the current language, "{n}" filled in; an unknown key shows as is.
export function t(key, vars) {
  const s = strings[session.lang][key] ?? strings.en[key] ?? key;
  return vars ? s.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? "")) : s;
}

// ---- API ----
export class ApiError extends Error {
  constructor(status, message, details = [], code = "") {
    super(message);
    this.status = status;
    this.details = details; // [{loc: "spec.replicas", msg: "..."}] for a 422
    this.code = code;
  }
}

// `key` tries another key than the logged-in one (the login form checks a key before keeping it).
export async function api(path, { method = "GET", body, text = false, signal, key } = {}) {
  const headers = { Authorization: `Bearer ${key || session.key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  if (r.status === 401) {
    if (!key) session.logout();
    throw new ApiError(401, t("login.expired"));
  }
  if (!r.ok) {
    let err = {};
    try {
      const b = await r.json();
      err = b.error || { message: typeof b.detail === "string" ? b.detail : r.statusText };
    } catch { err = { message: r.statusText }; }
    throw new ApiError(r.status, err.message || `HTTP ${r.status}`, err.details || [], err.code || "");
  }
  if (r.status === 204 || r.status === 202 && r.headers.get("content-length") === "0") return null;
  return text ? r.text() : (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

// Data of one GET, refreshed every `every` ms (0: once); `reload()` fetches now.
export function useApi(path, { every = 0, text = false } = {}) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true });
  const [n, setN] = useState(0);
  useEffect(() => {
    if (!path) return undefined;
    let alive = true;
    let timer;
    const ctl = new AbortController();
    const load = async () => {
      try {
        const data = await api(path, { text, signal: ctl.signal });
        if (alive) setState({ data, error: null, loading: false, path }); // path: what `data` answers
      } catch (e) {
        if (alive && e.name !== "AbortError") setState((s) => ({ data: s.data, error: e, loading: false }));
      }
      if (alive && every) timer = setTimeout(load, every);
    };
    load();
    return () => { alive = false; clearTimeout(timer); ctl.abort(); };
  }, [path, n, every]);
  return { ...state, reload: useCallback(() => setN((x) => x + 1), []) };
}

// ---- hash router: #/services/chat/monitoring → ["services", "chat", "monitoring"] ----
export function useRoute() {
  const parse = () => (location.hash.replace(/^#\/?/, "").split("?")[0] || "services").split("/").map(decodeURIComponent);
  const [route, setRoute] = useState(parse());
  useEffect(() => {
    const f = () => setRoute(parse());
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return route;
}
export const go = (...parts) => { location.hash = "#/" + parts.map(encodeURIComponent).join("/"); };
export const query = () => new URLSearchParams(location.hash.split("?")[1] || "");

// ---- formatting ----
export function bytes(n) {
  if (n == null || Number.isNaN(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}
export function num(n, digits = 2) {
  if (n == null || Number.isNaN(n)) return "–";
  const s = Number(n).toFixed(digits);
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s; // 1.50 → 1.5, but 10 stays 10
}
export const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(1)}%`);
export const ms = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(session.lang === "zh" ? "zh-CN" : "en-GB", { dateStyle: "short", timeStyle: "medium" });
}

// ---- widgets ----
let toastSet = null;
export function toast(message, kind = "error") { toastSet?.({ message, kind, at: Date.now() }); }
export function Toasts() {
  const [msg, setMsg] = useState(null);
  toastSet = setMsg;
  useEffect(() => {
    if (!msg) return undefined;
    const timer = setTimeout(() => setMsg(null), 6000);
    return () => clearTimeout(timer);
  }, [msg]);
  return msg && html`<div class="toast ${msg.kind}" role="alert" onClick=${() => setMsg(null)}>${msg.message}</div>`;
}

// Run an action that may fail: errors become a toast, success an optional toast.
export async function attempt(fn, ok) {
  try {
    const r = await fn();
    if (ok) toast(ok, "ok");
    return r;
  } catch (e) {
    toast(e.message);
    return undefined;
  }
}

export function Status({ value }) {
  return html`<span class="status status-${(value || "").toLowerCase()}">${t(`status.${value}`)}</span>`;
}

// columns: [{key, label, render?(row)}]; rows: objects; empty: shown when there is none.
export function Table({ columns, rows, empty, rowKey = (r) => r.name || r.id, testid }) {
  if (!rows) return html`<p class="muted">${t("loading")}</p>`;
  if (!rows.length) return html`<p class="muted">${empty || t("empty")}</p>`;
  return html`<table data-testid=${testid}>
    <thead><tr>${columns.map((c) => html`<th>${c.label}</th>`)}</tr></thead>
    <tbody>${rows.map((r) => html`<tr key=${rowKey(r)}>${columns.map((c) => html`<td>${c.render ? c.render(r) : r[c.key] ?? "–"}</td>`)}</tr>`)}</tbody>
  </table>`;
}

export function Tabs({ tabs, current, onSelect }) {
  return html`<nav class="tabs">${tabs.map(([id, label]) => html`<button class=${id === current ? "tab active" : "tab"} onClick=${() => onSelect(id)} data-tab=${id}>${label}</button>`)}</nav>`;
}

export function Modal({ title, children, onClose }) {
  return html`<div class="overlay" onClick=${(e) => e.target === e.currentTarget && onClose()}>
    <div class="modal" role="dialog" aria-label=${title}><h3>${title}</h3>${children}</div>
  </div>`;
}

// Ask before a destructive action; the user types the name when `confirmText` is given.
export function Confirm({ title, message, confirmText, action, onClose }) {
  const [typed, setTyped] = useState("");
  const [busy, setBusy] = useState(false);
  const ready = !confirmText || typed === confirmText;
  return html`<${Modal} title=${title} onClose=${onClose}>
    <p>${message}</p>
    ${confirmText && html`<p>${t("confirm.type", { name: confirmText })}</p><input value=${typed} onInput=${(e) => setTyped(e.target.value)} aria-label="confirm" />`}
    <div class="actions">
      <button onClick=${onClose}>${t("cancel")}</button>
      <button class="danger" disabled=${!ready || busy} onClick=${async () => { setBusy(true); await action(); setBusy(false); onClose(); }}>${t("confirm")}</button>
    </div>
  <//>`;
}

// A labelled form field with its inline error (from the API's 422 details or a local check).
export function Field({ label, error, hint, children }) {
  return html`<label class=${error ? "field invalid" : "field"}>
    <span class="label">${label}</span>${children}
    ${error ? html`<span class="error">${error}</span>` : hint && html`<span class="hint">${hint}</span>`}
  </label>`;
}

// Form state with the API's 422 details inline: a detail belongs to the field its loc names (or a
// parent of it, "gpus.1.name" → "gpus"); one that no field shows goes to a toast, so none is lost.
// Forms using it are novalidate: the API is the one judge, so the browser's bubbles do not pre-empt it.
export function useForm(initial) {
  const [values, setValues] = useState(initial);
  const [errors, setErrors] = useState([]);
  const [busy, setBusy] = useState(false);
  const owns = (field, loc) => loc === field || loc.startsWith(`${field}.`);
  const set = (key, value) => setValues((v) => ({ ...v, [key]: value }));
  return {
    values, busy, set,
    bind: (key) => ({ name: key, value: values[key], onInput: (e) => set(key, e.target.value) }),
    error: (key) => errors.filter((d) => owns(key, d.loc)).map((d) => d.msg).join("; "),
    async submit(call) {
      setBusy(true);
      setErrors([]);
      try {
        return await call(values);
      } catch (e) {
        const details = e.status === 422 ? e.details : [];
        setErrors(details);
        if (!details.length || details.some((d) => !Object.keys(initial).some((f) => owns(f, d.loc)))) toast(e.message);
        return undefined;
      } finally {
        setBusy(false);
      }
    },
  };
}

export function Copy({ text }) {
  return html`<div class="code"><pre>${text}</pre><button class="small" onClick=${() => navigator.clipboard?.writeText(text).then(() => toast(t("copied"), "ok"))}>${t("copy")}</button></div>`;
}

register({
  en: {
    loading: "Loading…", empty: "Nothing here yet.", cancel: "Cancel", confirm: "Confirm", save: "Save",
    copy: "Copy", copied: "Copied", refresh: "Refresh", delete: "Delete", create: "Create", actions: "Actions",
    name: "Name", description: "Description", created: "Created", updated: "Updated", status: "Status",
    "confirm.type": "Type {name} to confirm.", "login.expired": "The key was refused; log in again.",
    "status.Pending": "Pending", "status.Running": "Running", "status.Abnormal": "Abnormal", "status.Updating": "Updating",
    "status.Deleting": "Deleting", "status.Starting": "Starting", "status.Draining": "Draining", "status.Failed": "Failed",
    "status.Stopped": "Stopped", "status.Ready": "Ready", "status.NotReady": "Not ready", "status.Unreachable": "Unreachable",
  },
  zh: {
    loading: "加载中…", empty: "暂无数据。", cancel: "取消", confirm: "确认", save: "保存",
    copy: "复制", copied: "已复制", refresh: "刷新", delete: "删除", create: "创建", actions: "操作",
    name: "名称", description: "描述", created: "创建时间", updated: "更新时间", status: "状态",
    "confirm.type": "输入 {name} 以确认。", "login.expired": "密钥被拒绝，请重新登录。",
    "status.Pending": "部署中", "status.Running": "运行中", "status.Abnormal": "异常", "status.Updating": "更新中",
    "status.Deleting": "删除中", "status.Starting": "启动中", "status.Draining": "排空中", "status.Failed": "失败",
    "status.Stopped": "已停止", "status.Ready": "就绪", "status.NotReady": "未就绪", "status.Unreachable": "不可达",
  },
});
