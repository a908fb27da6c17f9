// Inference services: the list, the detail tabs, and the create/edit wizard (wizard.js).
import {
  api, attempt, Confirm, Copy, go, html, num, register, Status, t, Table, Tabs, useApi, useEffect, useState, when,
} from "../lib.js";
import { ServiceMonitoring } from "./monitoring.js";
import { Wizard } from "./wizard.js";

register({
  en: {
    "svc.title": "Inference services", "svc.new": "New inference service", "svc.access": "Access",
    "svc.engine": "Engine", "svc.resources": "Resources", "svc.instances": "Instances", "svc.edit": "Edit",
    "svc.restart": "Restart", "svc.delete": "Delete", "svc.none": "No service yet: deploy one from the model plaza or with “New inference service”.",
    "svc.restart.title": "Rolling restart", "svc.restart.msg": "Instances of {name} are replaced one by one; the service keeps serving.",
    "svc.delete.title": "Delete service", "svc.delete.msg": "In-flight requests finish first, then every instance of {name} stops. This cannot be undone.",
    "svc.restarted": "Restart started", "svc.deleting": "Deleting {name}", "svc.scale": "Scale", "svc.scaled": "Scaled to {n}",
    "tab.info": "Basic info", "tab.instances": "Instances", "tab.access": "Access", "tab.monitoring": "Monitoring",
    "tab.logs": "Logs", "tab.yaml": "YAML", "tab.events": "Events",
    "info.model": "Model", "info.cluster": "Cluster / group", "info.revision": "Revision", "info.replicas": "Replicas (ready/desired)",
    "info.mode": "Deployment", "info.params": "Framework parameters", "info.env": "Environment", "info.routing": "Routing",
    "info.message": "Message", "info.autoscaling": "Autoscaling",
    "inst.id": "Instance", "inst.state": "State", "inst.node": "Node", "inst.address": "Address", "inst.role": "Role",
    "inst.restarts": "Restarts", "inst.started": "Started", "inst.ready": "Ready", "inst.error": "Last error",
    "access.endpoint": "Endpoint", "access.exposure": "Exposure", "access.ports": "Service port / target port",
    "access.model": "Use this as `model`", "access.curl": "curl", "access.python": "Python (openai)",
    "access.internal": "Internal (same network only)", "access.external": "External",
    "logs.instance": "Instance", "logs.all": "All instances", "logs.grep": "Keyword", "logs.requestId": "Request id",
    "logs.sessionId": "Session id", "logs.lines": "Lines", "logs.follow": "Follow", "logs.search": "Search",
    "ev.at": "Time", "ev.reason": "Reason", "ev.message": "Message", "ev.instance": "Instance",
    "yaml.yaml": "Service document", "yaml.manifests": "Kubernetes manifests",
  },
  zh: {
    "svc.title": "推理服务", "svc.new": "新建推理服务", "svc.access": "访问方式",
    "svc.engine": "推理引擎", "svc.resources": "资源配置", "svc.instances": "实例数", "svc.edit": "编辑",
    "svc.restart": "重启", "svc.delete": "删除", "svc.none": "还没有服务：从模型广场部署，或点击“新建推理服务”。",
    "svc.restart.title": "滚动重启", "svc.restart.msg": "{name} 的实例将逐个替换，服务不中断。",
    "svc.delete.title": "删除服务", "svc.delete.msg": "进行中的请求完成后，{name} 的所有实例将停止。此操作不可撤销。",
    "svc.restarted": "已开始重启", "svc.deleting": "正在删除 {name}", "svc.scale": "扩缩容", "svc.scaled": "已调整为 {n} 个实例",
    "tab.info": "基本信息", "tab.instances": "实例列表", "tab.access": "访问方式", "tab.monitoring": "监控",
    "tab.logs": "日志", "tab.yaml": "YAML", "tab.events": "事件",
    "info.model": "模型", "info.cluster": "集群 / 资源组", "info.revision": "版本", "info.replicas": "实例（就绪/期望）",
    "info.mode": "部署架构", "info.params": "框架参数", "info.env": "环境变量", "info.routing": "路由",
    "info.message": "信息", "info.autoscaling": "弹性伸缩",
    "inst.id": "实例", "inst.state": "状态", "inst.node": "节点", "inst.address": "地址", "inst.role": "角色",
    "inst.restarts": "重启次数", "inst.started": "启动时间", "inst.ready": "就绪时间", "inst.error": "最近错误",
    "access.endpoint": "访问地址", "access.exposure": "访问类型", "access.ports": "服务端口 / 目标端口",
    "access.model": "请求中的 `model`", "access.curl": "curl", "access.python": "Python（openai）",
    "access.internal": "内网访问（仅同网络）", "access.external": "公网访问",
    "logs.instance": "实例", "logs.all": "全部实例", "logs.grep": "关键字", "logs.requestId": "请求 ID",
    "logs.sessionId": "会话 ID", "logs.lines": "行数", "logs.follow": "实时跟踪", "logs.search": "搜索",
    "ev.at": "时间", "ev.reason": "原因", "ev.message": "信息", "ev.instance": "实例",
    "yaml.yaml": "服务定义", "yaml.manifests": "Kubernetes 清单",
  },
});

export function ServicesPage({ route }) {
  const [, name, tab] = route;
  if (name === "new") return html`<${Wizard} />`;
  if (name && tab === "edit") return html`<${Wizard} editing=${name} />`;
  if (name) return html`<${ServiceDetail} name=${name} tab=${tab || "info"} />`;
  return html`<${ServiceList} />`;
}

const autoscaling = (a) =>
  `${a.minReplicas}–${a.maxReplicas} · ${a.targets.map((x) => `${x.metric} ${x.value}`).join(", ")}${a.idleToZeroSeconds ? ` · idle ${a.idleToZeroSeconds}s → 0` : ""}`;
const resources = (r) => `${num(r.cpu)} CPU · ${r.memory} · ${r.gpus} GPU`;
const engine = (e) => `${e.name}${e.version ? ` ${e.version}` : ""}`;

function ServiceList() {
  const { data } = useApi("/api/v1/services", { every: 3000 });
  const [ask, setAsk] = useState(null);
  const columns = [
    { label: t("name"), render: (s) => html`<a href="#/services/${s.name}" data-service=${s.name}>${s.name}</a><div class="hint">${s.description}</div>` },
    { label: t("svc.access"), render: (s) => html`<code>${s.access.modelField}</code><div class="hint">${t(`access.${s.access.exposure}`)}</div>` },
    { label: t("status"), render: (s) => html`<${Status} value=${s.status} />` },
    { label: t("svc.engine"), render: (s) => engine(s.engine) },
    { label: t("svc.resources"), render: (s) => resources(s.resources) },
    { label: t("svc.instances"), render: (s) => html`<span data-testid="replicas">${s.replicas.ready}/${s.replicas.desired}</span>${s.replicas.max != null ? html`<div class="hint">${s.replicas.min}–${s.replicas.max}</div>` : null}` },
    { label: `${t("created")} / ${t("updated")}`, render: (s) => html`${when(s.createdAt)}<div class="hint">${when(s.updatedAt)}</div>` },
    { label: t("actions"), render: (s) => html`<${Actions} svc=${s} ask=${setAsk} />` },
  ];
  return html`<div>
    <div class="bar"><h2>${t("svc.title")}</h2><button class="primary" data-testid="new-service" onClick=${() => go("services", "new")}>${t("svc.new")}</button></div>
    <${Table} testid="services" columns=${columns} rows=${data} empty=${t("svc.none")} />
    ${ask}
  </div>`;
}

// Edit, restart, delete: each destructive one asks first.
function Actions({ svc, ask, after }) {
  const close = () => ask(null);
  const restart = () => ask(html`<${Confirm} title=${t("svc.restart.title")} message=${t("svc.restart.msg", { name: svc.name })} onClose=${close}
    action=${() => attempt(() => api(`/api/v1/services/${svc.name}/restart`, { method: "POST" }), t("svc.restarted"))} />`);
  const remove = () => ask(html`<${Confirm} title=${t("svc.delete.title")} message=${t("svc.delete.msg", { name: svc.name })} confirmText=${svc.name} onClose=${close}
    action=${async () => { await attempt(() => api(`/api/v1/services/${svc.name}`, { method: "DELETE" }), t("svc.deleting", { name: svc.name })); after?.(); }} />`);
  return html`<span class="row">
    <button class="small" data-action="edit" onClick=${() => go("services", svc.name, "edit")}>${t("svc.edit")}</button>
    <button class="small" data-action="restart" onClick=${restart}>${t("svc.restart")}</button>
    <button class="small danger" data-action="delete" onClick=${remove}>${t("svc.delete")}</button>
  </span>`;
}

function ServiceDetail({ name, tab }) {
  const { data: svc, error, reload } = useApi(`/api/v1/services/${encodeURIComponent(name)}`, { every: 3000 });
  const [ask, setAsk] = useState(null);
  if (error && !svc) return html`<p class="error">${error.message}</p>`;
  if (!svc) return html`<p class="muted">${t("loading")}</p>`;
  const tabs = ["info", "instances", "access", "monitoring", "logs", "events", "yaml"].map((id) => [id, t(`tab.${id}`)]);
  const body = {
    info: () => html`<${Info} svc=${svc} />`,
    instances: () => html`<${Instances} svc=${svc} />`,
    access: () => html`<${Access} svc=${svc} />`,
    monitoring: () => html`<${ServiceMonitoring} service=${svc.name} />`,
    logs: () => html`<${Logs} svc=${svc} />`,
    events: () => html`<${Events} name=${svc.name} />`,
    yaml: () => html`<${Yaml} name=${svc.name} revision=${svc.revision} />`,
  }[tab];
  return html`<div>
    <div class="bar">
      <h2><a href="#/services">${t("svc.title")}</a> / ${svc.name}</h2>
      <${Status} value=${svc.status} />
      <${Scale} svc=${svc} after=${reload} />
      <${Actions} svc=${svc} ask=${setAsk} after=${() => go("services")} />
    </div>
    ${svc.message && html`<p class="hint">${svc.message}</p>`}
    <${Tabs} tabs=${tabs} current=${tab} onSelect=${(id) => go("services", name, id)} />
    ${body ? body() : null}
    ${ask}
  </div>`;
}

function Scale({ svc, after }) {
  const [n, setN] = useState(svc.replicas.desired);
  const submit = async () => {
    const spec = structuredClone(svc.spec);
    spec.spec.replicas = Number(n);
    if (await attempt(() => api(`/api/v1/services/${svc.name}`, { method: "PUT", body: spec }), t("svc.scaled", { n }))) after();
  };
  return html`<span class="row"><input type="number" min="0" max="64" style="width:70px" value=${n} onInput=${(e) => setN(e.target.value)} aria-label=${t("svc.scale")} />
    <button class="small" data-action="scale" onClick=${submit}>${t("svc.scale")}</button></span>`;
}

function Info({ svc }) {
  const s = svc.spec.spec;
  const kv = (pairs) => html`<dl class="kv">${pairs.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
  const dict = (o) => (Object.keys(o || {}).length ? Object.entries(o).map(([k, v]) => html`<div><code>${k}=${String(v)}</code></div>`) : "–");
  return html`<div class="panel">${kv([
    [t("name"), svc.name], [t("description"), svc.description || "–"], [t("info.model"), html`<a href="#/plaza/${s.model}">${s.model}</a>`],
    [t("status"), html`<${Status} value=${svc.status} />`], [t("info.message"), svc.message || "–"],
    [t("info.revision"), svc.revision], [t("info.cluster"), `${s.cluster} / ${s.resourceGroup}`],
    [t("svc.engine"), engine(s.engine)], [t("info.mode"), s.deployment.mode], [t("svc.resources"), resources(s.resources)],
    [t("info.replicas"), `${svc.replicas.ready}/${svc.replicas.desired}`],
    [t("info.autoscaling"), s.autoscaling ? html`<span data-testid="autoscaling">${autoscaling(s.autoscaling)}</span>` : "–"],
    [t("info.params"), dict(s.parameters)],
    [t("info.env"), dict(s.env)], [t("info.routing"), dict({ policy: s.routing.policy, ...s.routing.rateLimit })],
    [t("created"), when(svc.createdAt)], [t("updated"), when(svc.updatedAt)],
  ])}</div>`;
}

function Instances({ svc }) {
  const columns = [
    { label: t("inst.id"), render: (i) => html`<code>${i.id}</code>` },
    { label: t("inst.state"), render: (i) => html`<${Status} value=${i.state} />` },
    { label: t("inst.role"), key: "role" }, { label: t("info.revision"), key: "revision" },
    { label: t("inst.node"), key: "node" }, { label: t("inst.address"), key: "address" },
    { label: t("inst.restarts"), key: "restarts" },
    { label: t("inst.started"), render: (i) => when(i.startedAt) }, { label: t("inst.ready"), render: (i) => when(i.readyAt) },
    { label: t("inst.error"), render: (i) => html`<span class="hint">${i.lastError || "–"}</span>` },
  ];
  return html`<${Table} testid="instances" columns=${columns} rows=${svc.instances} rowKey=${(i) => i.id} />`;
}

function Access({ svc }) {
  const base = location.origin;
  const model = svc.access.modelField;
  const curl = `curl ${base}/v1/chat/completions \\
  -H "Authorization: Bearer $TIDESERVE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello!"}], "stream": true}'`;
  const python = `from openai import OpenAI

client = OpenAI(base_url="${base}/v1", api_key="<your tideserve API key>")
stream = client.chat.completions.create(
    model="${model}",
    messages=[{"role": "user", "content": "Hello!"}],
    stream=True,
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)`;
  return html`<div class="panel">
    <dl class="kv">
      <dt>${t("access.endpoint")}</dt><dd><code data-testid="endpoint">${base}${svc.access.endpoint}</code></dd>
      <dt>${t("access.model")}</dt><dd><code>${model}</code></dd>
      <dt>${t("access.exposure")}</dt><dd>${t(`access.${svc.access.exposure}`)}</dd>
      <dt>${t("access.ports")}</dt><dd>${svc.access.servicePort} / ${svc.access.targetPort}</dd>
    </dl>
    <h3>${t("access.curl")}</h3><${Copy} text=${curl} />
    <h3>${t("access.python")}</h3><${Copy} text=${python} />
  </div>`;
}

// The API filters; "follow" re-reads every 2 s so new lines appear while the tab is open.
function Logs({ svc }) {
  const [form, setForm] = useState({ instance: "", grep: "", request_id: "", session_id: "", lines: 200 });
  const [applied, setApplied] = useState(form);
  const [follow, setFollow] = useState(false);
  const params = new URLSearchParams(Object.entries(applied).filter(([, v]) => v !== "" && v != null));
  const logs = useApi(`/api/v1/services/${encodeURIComponent(svc.name)}/logs?${params}`, { every: follow ? 2000 : 0, text: true });
  const { data, error } = logs;
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  return html`<div>
    <form class="bar" onSubmit=${(e) => { e.preventDefault(); setApplied(form); }} data-testid="log-filters">
      <select value=${form.instance} onChange=${set("instance")} style="width:auto" aria-label=${t("logs.instance")}>
        <option value="">${t("logs.all")}</option>
        ${svc.instances.map((i) => html`<option value=${i.id}>${i.id} (${i.state})</option>`)}
      </select>
      <input style="width:160px" placeholder=${t("logs.grep")} value=${form.grep} onInput=${set("grep")} name="grep" />
      <input style="width:260px" placeholder=${t("logs.requestId")} value=${form.request_id} onInput=${set("request_id")} name="request_id" />
      <input style="width:200px" placeholder=${t("logs.sessionId")} value=${form.session_id} onInput=${set("session_id")} name="session_id" />
      <input style="width:80px" type="number" min="1" max="10000" value=${form.lines} onInput=${set("lines")} aria-label=${t("logs.lines")} />
      <button class="primary" type="submit" data-testid="log-search">${t("logs.search")}</button>
      <label class="row"><input type="checkbox" style="width:auto" checked=${follow} onChange=${(e) => setFollow(e.target.checked)} />${t("logs.follow")}</label>
    </form>
    ${error ? html`<p class="error">${error.message}</p>` : html`<pre class="log" data-testid="logs" data-for=${logs.path}>${data ?? t("loading")}</pre>`}
  </div>`;
}

function Events({ name }) {
  const { data } = useApi(`/api/v1/services/${encodeURIComponent(name)}/events?limit=200`, { every: 5000 });
  const columns = [
    { label: t("ev.at"), render: (e) => when(e.at) }, { label: t("ev.reason"), key: "reason" },
    { label: t("ev.instance"), render: (e) => e.instance || "–" }, { label: t("ev.message"), key: "message" },
  ];
  return html`<${Table} testid="events" columns=${columns} rows=${data?.items} rowKey=${(e) => `${e.at}${e.reason}${e.message}`} />`;
}

// The service document, or the Kubernetes objects it is applied as (on a local cluster: what it would be).
function Yaml({ name, revision }) {
  const [view, setView] = useState("yaml");
  const [text, setText] = useState(null);
  useEffect(() => {
    setText(null);
    api(`/api/v1/services/${encodeURIComponent(name)}/${view}`, { text: true }).then(setText, (e) => setText(e.message));
  }, [name, revision, view]);
  const pick = (v) => html`<button class=${v === view ? "small primary" : "small"} data-view=${v} onClick=${() => setView(v)}>${t(`yaml.${v}`)}</button>`;
  return html`<div class="row">${pick("yaml")} ${pick("manifests")}</div>
    ${text == null ? html`<p class="muted">${t("loading")}</p>` : html`<${Copy} text=${text} />`}`;
}
