// API keys: who may call which services, until when, how much. The secret is shown once, right after
// creation; afterwards only its prefix is known, so it cannot be shown again.
import {
  api, attempt, Confirm, Copy, Field, html, Modal, register, Status, t, Table, toast, useApi, useForm, useState, when,
} from "../lib.js";

register({
  en: {
    "keys.title": "API keys", "keys.create": "Create key", "keys.scope": "Scope", "keys.prefix": "Prefix",
    "keys.services": "Services", "keys.allServices": "All services", "keys.priority": "Priority", "keys.limits": "Limits",
    "keys.expires": "Expires", "keys.never": "Never", "keys.edit": "Edit", "keys.revoke": "Revoke",
    "keys.rpm": "{n} req/min", "keys.tpm": "{n} tokens/min", "keys.concurrent": "{n} concurrent", "keys.unlimited": "Unlimited",
    "keys.scope.inference": "inference", "keys.scope.admin": "admin",
    "keys.scopeHint": "inference: calls services (/v1/*); admin: the whole platform, this console included.",
    "keys.priority.high": "High", "keys.priority.normal": "Normal", "keys.priority.low": "Low",
    "keys.priorityHint": "Under pressure, low-priority requests wait behind higher ones.",
    "keys.servicesHint": "Service names separated by commas; empty: every service.", "keys.known": "Existing services:",
    "keys.nameHint": "Letters, digits, '_', '.' and '-'.", "keys.expiry": "Expiry", "keys.expiry.keep": "Keep as is ({at})",
    "keys.expiry.never": "Never expires", "keys.expiry.in": "Expires after a duration", "keys.expiry.at": "Expires at a time",
    "keys.durationHint": "A whole number and s, m, h or d, e.g. 30d.",
    "keys.rpmLabel": "Requests per minute", "keys.tpmLabel": "Tokens per minute", "keys.concurrentLabel": "Concurrent requests",
    "keys.limitHint": "Empty: no limit.", "keys.createTitle": "Create an API key", "keys.editTitle": "Edit key {name}",
    "keys.saved": "Key {name} updated.", "keys.createdTitle": "Key {name} created",
    "keys.once": "Copy the key now: it is shown only this once and cannot be retrieved later.",
    "keys.use": "Send it as a bearer token: Authorization: Bearer <key>", "keys.done": "I have copied it",
    "keys.revokeTitle": "Revoke key {name}", "keys.revokeMsg": "Requests with this key are refused from now on; a revoked key cannot be restored.",
    "keys.revoked": "Key revoked.", "status.Active": "Active", "status.Revoked": "Revoked", "status.Expired": "Expired",
  },
  zh: {
    "keys.title": "API 密钥", "keys.create": "创建密钥", "keys.scope": "权限范围", "keys.prefix": "前缀",
    "keys.services": "服务", "keys.allServices": "全部服务", "keys.priority": "优先级", "keys.limits": "限额",
    "keys.expires": "过期时间", "keys.never": "永不过期", "keys.edit": "编辑", "keys.revoke": "吊销",
    "keys.rpm": "{n} 请求/分钟", "keys.tpm": "{n} token/分钟", "keys.concurrent": "{n} 并发", "keys.unlimited": "不限",
    "keys.scope.inference": "推理", "keys.scope.admin": "管理",
    "keys.scopeHint": "推理：调用服务（/v1/*）；管理：整个平台，包括本控制台。",
    "keys.priority.high": "高", "keys.priority.normal": "普通", "keys.priority.low": "低",
    "keys.priorityHint": "负载高时，低优先级请求排在高优先级请求之后。",
    "keys.servicesHint": "服务名称，用逗号分隔；留空：全部服务。", "keys.known": "已有服务：",
    "keys.nameHint": "字母、数字、“_”、“.”和“-”。", "keys.expiry": "有效期", "keys.expiry.keep": "保持不变（{at}）",
    "keys.expiry.never": "永不过期", "keys.expiry.in": "一段时间后过期", "keys.expiry.at": "在指定时间过期",
    "keys.durationHint": "整数加 s、m、h 或 d，例如 30d。",
    "keys.rpmLabel": "每分钟请求数", "keys.tpmLabel": "每分钟 token 数", "keys.concurrentLabel": "并发请求数",
    "keys.limitHint": "留空：不限。", "keys.createTitle": "创建 API 密钥", "keys.editTitle": "编辑密钥 {name}",
    "keys.saved": "密钥 {name} 已更新。", "keys.createdTitle": "密钥 {name} 已创建",
    "keys.once": "请立即复制密钥：它只显示这一次，之后无法再次查看。",
    "keys.use": "以 Bearer 令牌发送：Authorization: Bearer <密钥>", "keys.done": "我已复制",
    "keys.revokeTitle": "吊销密钥 {name}", "keys.revokeMsg": "此后使用该密钥的请求都会被拒绝；吊销后无法恢复。",
    "keys.revoked": "密钥已吊销。", "status.Active": "有效", "status.Revoked": "已吊销", "status.Expired": "已过期",
  },
});

const LIMITS = [["requestsPerMinute", "keys.rpm", "keys.rpmLabel"], ["tokensPerMinute", "keys.tpm", "keys.tpmLabel"], ["maxConcurrent", "keys.concurrent", "keys.concurrentLabel"]];
const keyState = (k) => (k.revoked ? "Revoked" : k.expired ? "Expired" : "Active");
function Limits({ k }) {
  const set = LIMITS.filter(([f]) => k[f] != null);
  if (!set.length) return html`<span class="muted">${t("keys.unlimited")}</span>`;
  return html`<div class="lines">${set.map(([f, label]) => html`<div class="nowrap">${t(label, { n: k[f].toLocaleString() })}</div>`)}</div>`;
}

export function KeysPage() {
  const { data, error, reload } = useApi("/api/v1/keys");
  const [editing, setEditing] = useState(null); // {} to create, a key to edit
  const [created, setCreated] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const columns = [
    { key: "name", label: t("name"), render: (k) => html`<span class="nowrap">${k.name}</span>` },
    { key: "scope", label: t("keys.scope"), render: (k) => html`<span class="tag">${t(`keys.scope.${k.scope}`)}</span>` },
    { key: "prefix", label: t("keys.prefix"), render: (k) => html`<code class="nowrap">${k.prefix}…</code>` },
    { key: "state", label: t("status"), render: (k) => html`<${Status} value=${keyState(k)} />` },
    { key: "services", label: t("keys.services"), render: (k) => (k.services
      ? html`<div class="tags">${k.services.map((s) => html`<span class="tag">${s}</span>`)}</div>` : html`<span class="muted">${t("keys.allServices")}</span>`) },
    { key: "priority", label: t("keys.priority"), render: (k) => t(`keys.priority.${k.priority}`) },
    { key: "limits", label: t("keys.limits"), render: (k) => html`<${Limits} k=${k} />` },
    { key: "expiresAt", label: t("keys.expires"), render: (k) => (k.expiresAt ? when(k.expiresAt) : t("keys.never")) },
    { key: "createdAt", label: t("created"), render: (k) => when(k.createdAt) },
    { key: "actions", label: t("actions"), render: (k) => !k.revoked && html`<div class="row">
      <button class="small" data-testid="edit-key" onClick=${() => setEditing(k)}>${t("keys.edit")}</button>
      <button class="small danger" data-testid="revoke-key" onClick=${() => setRevoking(k.name)}>${t("keys.revoke")}</button></div>` },
  ];
  const revoke = async () => {
    const done = await attempt(async () => { await api(`/api/v1/keys/${encodeURIComponent(revoking)}`, { method: "DELETE" }); return true; }, t("keys.revoked"));
    if (done) reload();
  };
  return html`<section>
    <div class="bar"><h2>${t("keys.title")}</h2>
      <button class="primary" data-testid="create-key" onClick=${() => setEditing({})}>${t("keys.create")}</button></div>
    ${error && html`<p class="error">${error.message}</p>`}
    <${Table} testid="keys" columns=${columns} rows=${data} />
    ${editing && html`<${KeyForm} current=${editing.name ? editing : null} onClose=${() => setEditing(null)}
      onSaved=${(k) => { reload(); if (k.key) setCreated(k); }} />`}
    ${created && html`<${CreatedKey} created=${created} onClose=${() => setCreated(null)} />`}
    ${revoking && html`<${Confirm} title=${t("keys.revokeTitle", { name: revoking })} message=${t("keys.revokeMsg")}
      confirmText=${revoking} action=${revoke} onClose=${() => setRevoking(null)} />`}
  </section>`;
}

// Only the button closes it: a stray click beside the dialog must not lose the one view of the secret.
function CreatedKey({ created, onClose }) {
  return html`<${Modal} title=${t("keys.createdTitle", { name: created.name })} onClose=${() => {}}>
    <p class="verdict warn" role="alert">${t("keys.once")}</p>
    <div data-testid="new-key"><${Copy} text=${created.key} /></div>
    <p class="hint">${t("keys.use")}</p>
    <div class="actions"><button class="primary" data-testid="key-done" onClick=${onClose}>${t("keys.done")}</button></div>
  <//>`;
}

const initialValues = (k) => ({
  name: "", scope: "inference",
  services: k?.services?.join(", ") ?? "", priority: k?.priority ?? "normal",
  expiry: k ? "keep" : "never", expiresIn: "30d", expiresAt: "",
  ...Object.fromEntries(LIMITS.map(([f]) => [f, k?.[f] != null ? String(k[f]) : ""])),
});

// The access fields as the API takes them, for POST and PATCH alike: null clears a field (no limit,
// every service, no expiry); "keep" leaves the expiry out so PATCH does not touch it.
function accessBody(v) {
  const names = v.services.split(/[\s,]+/).filter(Boolean);
  const body = { services: names.length ? names : null, priority: v.priority };
  for (const [f] of LIMITS) body[f] = v[f] === "" ? null : Number(v[f]);
  if (v.expiry === "never") body.expiresIn = null;
  if (v.expiry === "in") body.expiresIn = v.expiresIn.trim();
  // datetime-local is the browser's local time: send it with its zone. An empty one goes as is, for the API to name.
  if (v.expiry === "at") body.expiresAt = v.expiresAt && new Date(v.expiresAt).toISOString();
  return body;
}

function KeyForm({ current, onClose, onSaved }) {
  const form = useForm(initialValues(current));
  const { data: services } = useApi("/api/v1/services");
  const v = form.values;
  const save = async (e) => {
    e.preventDefault();
    const call = current
      ? () => api(`/api/v1/keys/${encodeURIComponent(current.name)}`, { method: "PATCH", body: accessBody(v) })
      : () => api("/api/v1/keys", { method: "POST", body: { name: v.name.trim(), scope: v.scope, ...accessBody(v) } });
    const k = await form.submit(call);
    if (!k) return;
    if (current) toast(t("keys.saved", { name: k.name }), "ok");
    onSaved(k);
    onClose();
  };
  const addService = (name) => {
    const names = v.services.split(/[\s,]+/).filter(Boolean);
    if (!names.includes(name)) form.set("services", [...names, name].join(", "));
  };
  const modes = [...(current ? ["keep"] : []), "never", "in", "at"];
  const expiryLabel = (m) => t(`keys.expiry.${m}`, { at: current?.expiresAt ? when(current.expiresAt) : t("keys.never") });
  return html`<${Modal} title=${current ? t("keys.editTitle", { name: current.name }) : t("keys.createTitle")} onClose=${onClose}>
    <form data-testid="key-form" novalidate onSubmit=${save}>
      ${!current && html`
        <${Field} label=${t("name")} error=${form.error("name")} hint=${t("keys.nameHint")}><input ...${form.bind("name")} autocomplete="off" /><//>
        <${Field} label=${t("keys.scope")} error=${form.error("scope")} hint=${t("keys.scopeHint")}>
          <select ...${form.bind("scope")}>${["inference", "admin"].map((s) => html`<option value=${s}>${t(`keys.scope.${s}`)}</option>`)}</select><//>`}
      <${Field} label=${t("keys.services")} error=${form.error("services")} hint=${t("keys.servicesHint")}><input ...${form.bind("services")} autocomplete="off" /><//>
      ${services?.length > 0 && html`<div class="tags known"><span class="hint">${t("keys.known")}</span>
        ${services.map((s) => html`<button type="button" class="tag" onClick=${() => addService(s.name)}>${s.name}</button>`)}</div>`}
      <${Field} label=${t("keys.expiry")} error=${form.error("expiresIn") || form.error("expiresAt")}
        hint=${v.expiry === "in" ? t("keys.durationHint") : ""}>
        <div class="row">
          <select ...${form.bind("expiry")}>${modes.map((m) => html`<option value=${m}>${expiryLabel(m)}</option>`)}</select>
          ${v.expiry === "in" && html`<input ...${form.bind("expiresIn")} aria-label=${t("keys.expiry.in")} />`}
          ${v.expiry === "at" && html`<input ...${form.bind("expiresAt")} type="datetime-local" aria-label=${t("keys.expiry.at")} />`}
        </div><//>
      <${Field} label=${t("keys.priority")} error=${form.error("priority")} hint=${t("keys.priorityHint")}>
        <select ...${form.bind("priority")}>${["high", "normal", "low"].map((p) => html`<option value=${p}>${t(`keys.priority.${p}`)}</option>`)}</select><//>
      <div class="form">
        ${LIMITS.map(([f, , label]) => html`<${Field} label=${t(label)} error=${form.error(f)} hint=${t("keys.limitHint")}>
          <input ...${form.bind(f)} type="number" min="1" step="1" /><//>`)}
      </div>
      <div class="actions">
        <button type="button" onClick=${onClose}>${t("cancel")}</button>
        <button class="primary" type="submit" disabled=${form.busy} data-testid="submit-key">${current ? t("save") : t("create")}</button>
      </div>
    </form>
  <//>`;
}
