// The create/edit form of an inference service. Every change is checked by the API's dry run (the
// same validation and fit check a deploy gets), so errors show next to their field before submit.
import { api, bytes, Field, go, html, query, register, t, toast, useApi, useEffect, useState } from "../lib.js";

register({
  en: {
    "wiz.create": "New inference service", "wiz.edit": "Edit {name}", "wiz.basic": "Basic", "wiz.deployment": "Deployment",
    "wiz.access": "Access", "wiz.advanced": "Advanced", "wiz.name": "Service name", "wiz.name.hint": "Lowercase letters, digits and -; unique.",
    "wiz.description": "Description (≤ 1000 characters)", "wiz.model": "Model", "wiz.cluster": "Cluster", "wiz.group": "Resource group",
    "wiz.cpu": "CPU per instance", "wiz.memory": "Memory per instance", "wiz.memory.hint": "e.g. 2Gi, 512Mi",
    "wiz.gpus": "GPUs per instance", "wiz.replicas": "Instances", "wiz.engine": "Engine", "wiz.engineVersion": "Engine version",
    "wiz.engineVersion.hint": "Empty: the default of this engine.", "wiz.mode": "Deployment architecture",
    "wiz.mode.single": "Single machine", "wiz.mode.multiNode": "Multi-machine", "wiz.mode.pdDisaggregated": "Prefill/decode separated",
    "wiz.nodesPerInstance": "Machines per instance", "wiz.prefillReplicas": "Prefill instances", "wiz.decodeReplicas": "Decode instances",
    "wiz.servicePort": "Service port", "wiz.targetPort": "Target port (fixed by the platform)", "wiz.exposure": "Exposure",
    "wiz.env": "Environment variables", "wiz.env.hint": "KEY=value, one per line; pasting many lines works.",
    "wiz.env.bad": "line {n}: “{line}” is not KEY=value", "wiz.policy": "Load balancing",
    "wiz.fit": "Fit check", "wiz.fit.checking": "Checking…", "wiz.submit.create": "Deploy", "wiz.submit.edit": "Apply (rolling update)",
    "wiz.created": "Service {name} created", "wiz.updated": "Service {name} updated", "wiz.immutable": "Fixed after creation.",
    "wiz.tpSize": "tpSize (tensor parallel)", "wiz.ppSize": "ppSize (pipeline parallel)", "wiz.dpSize": "dpSize (data parallel)",
    "wiz.maxModelLen": "maxModelLen", "wiz.maxModelLen.hint": "≥ 1024; empty: the model's context or 32768.",
    "wiz.maxBatchSize": "maxBatchSize", "wiz.gpuMemoryUtilization": "gpuMemoryUtilization", "wiz.gpuMemoryUtilization.hint": "(0, 1]; 0.85–0.95 is typical.",
    "wiz.maxNumBatchedTokens": "maxNumBatchedTokens", "wiz.errors": "Fix the fields marked in red.",
    "wiz.needs": "needs {n}",
    "wiz.autoscaling": "Autoscaling", "wiz.autoscaling.hint": "Leave empty for a fixed instance count. With autoscaling, “Instances” is only the start; behavior, more targets and schedules go in the YAML.",
    "wiz.autoscaling.minReplicas": "Min instances (0: scale to zero)", "wiz.autoscaling.maxReplicas": "Max instances",
    "wiz.autoscaling.targets.0.metric": "Scale on", "wiz.autoscaling.targets.0.value": "Target per instance",
    "wiz.autoscaling.idleToZeroSeconds": "Idle before zero (s)", "wiz.idleToZeroSeconds.hint": "Only with min 0; default 300.",
    "wiz.metric.waitingPerReplica": "Waiting requests", "wiz.metric.runningPerReplica": "Running requests",
    "wiz.metric.kvCacheUsage": "KV-cache use (0–1)", "wiz.metric.ttftP90": "TTFT p90 (s, SLO)",
    "wiz.metric.gpuUtilization": "GPU utilization (0–1)", "wiz.metric.requestsPerSecond": "Requests/s",
    "wiz.routing": "Routing and limits", "wiz.optional": "Optional: empty keeps the default.",
    "wiz.routing.rateLimit.requestsPerMinute": "Requests per minute (service)", "wiz.routing.rateLimit.tokensPerMinute": "Tokens per minute (service)",
    "wiz.routing.rateLimit.maxConcurrent": "Max concurrent requests", "wiz.routing.queue.maxSize": "Gateway queue size",
    "wiz.routing.queue.timeoutSeconds": "Queue timeout (s)", "wiz.routing.requestTimeoutSeconds": "Request timeout (s)",
    "wiz.routing.maxInflightPerInstance": "Max in flight per instance", "wiz.routing.canary.stableRevision": "Canary: stable revision",
    "wiz.routing.canary.stableReplicas": "Canary: stable instances", "wiz.routing.canary.weight": "Canary: % to the new revision",
    "wiz.routing.promptLength.thresholdTokens": "Long-prompt pool from (tokens)", "wiz.routing.promptLength.longReplicas": "Long-prompt pool instances",
  },
  zh: {
    "wiz.create": "新建推理服务", "wiz.edit": "编辑 {name}", "wiz.basic": "基本信息", "wiz.deployment": "部署配置",
    "wiz.access": "访问配置", "wiz.advanced": "高级配置", "wiz.name": "服务名称", "wiz.name.hint": "小写字母、数字和 -，不可重复。",
    "wiz.description": "描述（不超过 1000 字）", "wiz.model": "模型", "wiz.cluster": "集群", "wiz.group": "资源组",
    "wiz.cpu": "单实例 CPU", "wiz.memory": "单实例内存", "wiz.memory.hint": "例如 2Gi、512Mi",
    "wiz.gpus": "单实例 GPU 数", "wiz.replicas": "实例数", "wiz.engine": "推理引擎", "wiz.engineVersion": "引擎版本",
    "wiz.engineVersion.hint": "留空：使用该引擎的默认版本。", "wiz.mode": "部署架构",
    "wiz.mode.single": "单机部署", "wiz.mode.multiNode": "多机分布式", "wiz.mode.pdDisaggregated": "PD 分离",
    "wiz.nodesPerInstance": "单实例机器数", "wiz.prefillReplicas": "Prefill 实例数", "wiz.decodeReplicas": "Decode 实例数",
    "wiz.servicePort": "服务端口", "wiz.targetPort": "目标端口（平台固定）", "wiz.exposure": "访问类型",
    "wiz.env": "环境变量", "wiz.env.hint": "每行一个 KEY=value，可一次粘贴多行。",
    "wiz.env.bad": "第 {n} 行：“{line}” 不是 KEY=value", "wiz.policy": "负载均衡",
    "wiz.fit": "资源评估", "wiz.fit.checking": "评估中…", "wiz.submit.create": "部署", "wiz.submit.edit": "应用（滚动更新）",
    "wiz.created": "服务 {name} 已创建", "wiz.updated": "服务 {name} 已更新", "wiz.immutable": "创建后不可修改。",
    "wiz.tpSize": "tpSize（张量并行）", "wiz.ppSize": "ppSize（流水线并行）", "wiz.dpSize": "dpSize（数据并行）",
    "wiz.maxModelLen": "maxModelLen", "wiz.maxModelLen.hint": "≥ 1024；留空：模型上下文长度或 32768。",
    "wiz.maxBatchSize": "maxBatchSize", "wiz.gpuMemoryUtilization": "gpuMemoryUtilization", "wiz.gpuMemoryUtilization.hint": "(0, 1]，通常 0.85–0.95。",
    "wiz.maxNumBatchedTokens": "maxNumBatchedTokens", "wiz.errors": "请修改标红的字段。",
    "wiz.needs": "需要 {n}",
    "wiz.autoscaling": "弹性伸缩", "wiz.autoscaling.hint": "留空则实例数固定。开启后“实例数”只是初始值；伸缩行为、多个指标和定时策略请在 YAML 中配置。",
    "wiz.autoscaling.minReplicas": "最小实例数（0：缩容到零）", "wiz.autoscaling.maxReplicas": "最大实例数",
    "wiz.autoscaling.targets.0.metric": "伸缩指标", "wiz.autoscaling.targets.0.value": "单实例目标值",
    "wiz.autoscaling.idleToZeroSeconds": "空闲多久缩到零（秒）", "wiz.idleToZeroSeconds.hint": "仅当最小为 0；默认 300。",
    "wiz.metric.waitingPerReplica": "排队请求数", "wiz.metric.runningPerReplica": "运行中请求数",
    "wiz.metric.kvCacheUsage": "KV 缓存使用率（0–1）", "wiz.metric.ttftP90": "TTFT p90（秒，SLO）",
    "wiz.metric.gpuUtilization": "GPU 利用率（0–1）", "wiz.metric.requestsPerSecond": "每秒请求数",
    "wiz.routing": "路由与限流", "wiz.optional": "可选：留空使用默认值。",
    "wiz.routing.rateLimit.requestsPerMinute": "每分钟请求数（服务）", "wiz.routing.rateLimit.tokensPerMinute": "每分钟 Token 数（服务）",
    "wiz.routing.rateLimit.maxConcurrent": "最大并发请求", "wiz.routing.queue.maxSize": "网关排队长度",
    "wiz.routing.queue.timeoutSeconds": "排队超时（秒）", "wiz.routing.requestTimeoutSeconds": "请求超时（秒）",
    "wiz.routing.maxInflightPerInstance": "单实例最大在途请求", "wiz.routing.canary.stableRevision": "灰度：稳定版本",
    "wiz.routing.canary.stableReplicas": "灰度：稳定版本实例数", "wiz.routing.canary.weight": "灰度：新版本流量 %",
    "wiz.routing.promptLength.thresholdTokens": "长提示池阈值（Token）", "wiz.routing.promptLength.longReplicas": "长提示池实例数",
  },
});

// spec.routing's fields, all numbers; empty ones are left out (the API's defaults apply).
const ROUTING_FIELDS = [
  "rateLimit.requestsPerMinute", "rateLimit.tokensPerMinute", "rateLimit.maxConcurrent", "queue.maxSize",
  "queue.timeoutSeconds", "requestTimeoutSeconds", "maxInflightPerInstance", "canary.stableRevision",
  "canary.stableReplicas", "canary.weight", "promptLength.thresholdTokens", "promptLength.longReplicas",
];
// spec.autoscaling as the form shows it: one target (more, and behavior and schedules, in YAML).
const AUTOSCALING_FIELDS = ["minReplicas", "maxReplicas", "targets.0.metric", "targets.0.value", "idleToZeroSeconds"];
const METRICS = ["waitingPerReplica", "runningPerReplica", "kvCacheUsage", "ttftP90", "gpuUtilization", "requestsPerSecond"];
// Optional sections that exist only when one of their fields is set.
const SECTIONS = ["spec.routing.canary", "spec.routing.promptLength", "spec.autoscaling"];

// Form keys are the document paths the API names in its errors, so an error lands on its field.
const NUMBERS = new Set([
  "spec.replicas", "spec.resources.cpu", "spec.resources.gpus", "spec.deployment.nodesPerInstance",
  "spec.deployment.prefillReplicas", "spec.deployment.decodeReplicas", "spec.access.servicePort",
  "spec.parameters.tpSize", "spec.parameters.ppSize", "spec.parameters.dpSize", "spec.parameters.maxModelLen",
  "spec.parameters.maxBatchSize", "spec.parameters.gpuMemoryUtilization", "spec.parameters.maxNumBatchedTokens",
  ...ROUTING_FIELDS.map((f) => `spec.routing.${f}`),
  ...AUTOSCALING_FIELDS.filter((f) => f !== "targets.0.metric").map((f) => `spec.autoscaling.${f}`),
]);
const DEFAULTS = {
  "metadata.name": "", "metadata.description": "", "spec.model": "", "spec.cluster": "local", "spec.resourceGroup": "default",
  "spec.engine.name": "builtin", "spec.engine.version": "", "spec.replicas": "1", "spec.resources.cpu": "1",
  "spec.resources.memory": "2Gi", "spec.resources.gpus": "0", "spec.deployment.mode": "single",
  "spec.deployment.nodesPerInstance": "", "spec.deployment.prefillReplicas": "", "spec.deployment.decodeReplicas": "",
  "spec.access.servicePort": "8080", "spec.access.exposure": "internal", "spec.env": "",
  "spec.parameters.tpSize": "1", "spec.parameters.ppSize": "1", "spec.parameters.dpSize": "1", "spec.parameters.maxModelLen": "",
  "spec.parameters.maxBatchSize": "32", "spec.parameters.gpuMemoryUtilization": "0.9", "spec.parameters.maxNumBatchedTokens": "",
  "spec.routing.policy": "prefix_aware",
  ...Object.fromEntries(ROUTING_FIELDS.map((f) => [`spec.routing.${f}`, ""])),
  ...Object.fromEntries(AUTOSCALING_FIELDS.map((f) => [`spec.autoscaling.${f}`, ""])),
};
const IMMUTABLE = new Set(["metadata.name", "spec.engine.name", "spec.deployment.mode"]);
// A field's label is "wiz." + its last path part, but for these (whose last parts clash or mislead).
const LABELS = {
  "spec.engine.name": "wiz.engine", "spec.engine.version": "wiz.engineVersion", "spec.resourceGroup": "wiz.group",
  "spec.deployment.mode": "wiz.mode", "spec.routing.policy": "wiz.policy", "spec.access.exposure": "wiz.exposure",
};

// "A=1\nB=two" → [{A: "1", B: "two"}, null] or [null, "line 2: ..."]
function parseEnv(text) {
  const env = {};
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.replace(/^export\s+/, ""));
    if (!m) return [null, t("wiz.env.bad", { n: i + 1, line })];
    env[m[1]] = m[2].replace(/^(["'])(.*)\1$/, "$2");
  }
  return [env, null];
}

function flatten(doc) {
  const form = { ...DEFAULTS };
  for (const key of Object.keys(DEFAULTS)) {
    const value = key.split(".").reduce((o, k) => (o == null ? undefined : o[k]), doc);
    if (key === "spec.env") form[key] = Object.entries(value || {}).map(([k, v]) => `${k}=${v}`).join("\n");
    else if (value != null) form[key] = String(value);
  }
  return form;
}

// The document to send: `base` (the stored spec when editing, so fields this form does not show,
// such as a canary, are kept) with the form's fields set; empty optional fields are left out.
function build(form, base) {
  const doc = structuredClone(base || { metadata: {}, spec: {} });
  for (const [key, raw] of Object.entries(form)) {
    const path = key.split(".");
    const last = path.pop();
    const parent = path.reduce((o, k, i) => (o[k] ??= /^\d+$/.test(path[i + 1] ?? last) ? [] : {}), doc);
    if (key === "spec.env") parent[last] = parseEnv(raw)[0] || {};
    else if (raw === "") delete parent[last];
    else parent[last] = NUMBERS.has(key) ? Number(raw) : raw;
  }
  for (const section of SECTIONS) {
    const path = section.split(".");
    const last = path.pop();
    const parent = path.reduce((o, k) => o?.[k], doc);
    if (parent && isEmpty(parent[last])) delete parent[last];
  }
  return doc;
}

// {} and [{}] and {targets: [{}]}: nothing the user set.
const isEmpty = (v) => v != null && typeof v === "object" && Object.values(v).every(isEmpty);

const byLoc = (details) => Object.fromEntries((details || []).map((d) => [d.loc, d.msg]));

export function Wizard({ editing }) {
  const existing = useApi(editing ? `/api/v1/services/${encodeURIComponent(editing)}` : null);
  const models = useApi("/api/v1/models");
  const clusters = useApi("/api/v1/clusters");
  const [form, setForm] = useState(() => ({ ...DEFAULTS, "spec.model": query().get("model") || "" }));
  const groups = useApi(`/api/v1/clusters/${encodeURIComponent(form["spec.cluster"])}/groups`);
  const [errors, setErrors] = useState({});
  const [fit, setFit] = useState(null);
  const [busy, setBusy] = useState(false);
  const base = existing.data?.spec;

  useEffect(() => { if (base) setForm(flatten(base)); }, [base]);

  // The dry run, 400 ms after the last change.
  useEffect(() => {
    const [, envError] = parseEnv(form["spec.env"]);
    if (!form["spec.model"] || (editing && !base)) return undefined;
    const timer = setTimeout(async () => {
      setFit("checking");
      const doc = build(form, base);
      if (!doc.metadata.name) doc.metadata.name = "dry-run-check"; // the name is checked on submit
      try {
        const r = await api("/api/v1/services/dry-run", { method: "POST", body: doc });
        setErrors(envError ? { "spec.env": envError } : {});
        setFit(r.fit);
      } catch (e) {
        setErrors({ ...byLoc(e.details), ...(envError ? { "spec.env": envError } : {}) });
        setFit(null);
      }
    }, 400);
    return () => clearTimeout(timer);
  }, [JSON.stringify(form), base]);

  const submit = async (e) => {
    e.preventDefault();
    const [, envError] = parseEnv(form["spec.env"]);
    if (envError) return setErrors({ ...errors, "spec.env": envError });
    setBusy(true);
    const doc = build(form, base);
    try {
      const name = editing || doc.metadata.name;
      await (editing
        ? api(`/api/v1/services/${encodeURIComponent(editing)}`, { method: "PUT", body: doc })
        : api("/api/v1/services", { method: "POST", body: doc }));
      toast(t(editing ? "wiz.updated" : "wiz.created", { name }), "ok");
      go("services", name);
    } catch (err) {
      const fields = byLoc(err.details);
      if (err.status === 409) fields["metadata.name"] = err.message;
      setErrors(fields);
      toast(Object.keys(fields).length ? t("wiz.errors") : err.message);
    }
    setBusy(false);
    return undefined;
  };

  const input = (key, { type = "text", options, hint, area } = {}) => {
    const locked = editing && IMMUTABLE.has(key);
    const props = { name: key, value: form[key], disabled: locked, onInput: (e) => setForm({ ...form, [key]: e.target.value }) };
    const section = key.startsWith("spec.routing.") || key.startsWith("spec.autoscaling.");
    const label = t(LABELS[key] || `wiz.${key.split(".").slice(section ? 1 : -1).join(".")}`);
    let control;
    if (options) control = html`<select ...${props} onChange=${props.onInput}>${options.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select>`;
    else if (area) control = html`<textarea rows="5" ...${props}></textarea>`;
    else control = html`<input type=${type} step="any" ...${props} />`;
    return html`<${Field} label=${label} error=${errors[key]} hint=${locked ? t("wiz.immutable") : hint}>${control}<//>`;
  };
  const mode = form["spec.deployment.mode"];
  const modelOptions = [["", "—"], ...(models.data || []).map((m) => [m.name, `${m.displayName || m.name}${m.parametersHuman ? ` (${m.parametersHuman})` : ""}`])];
  const names = (r) => (r.data || []).map((x) => [x.name, x.name]);

  return html`<form onSubmit=${submit} data-testid="wizard">
    <div class="bar"><h2>${editing ? t("wiz.edit", { name: editing }) : t("wiz.create")}</h2></div>
    <div class="panel form">
      <h3>${t("wiz.basic")}</h3>
      ${input("metadata.name", { hint: t("wiz.name.hint") })}
      ${input("spec.model", { options: modelOptions })}
      <div class="wide">${input("metadata.description", { area: true })}</div>
      <h3>${t("wiz.deployment")}</h3>
      ${input("spec.cluster", { options: names(clusters) })}
      ${input("spec.resourceGroup", { options: names(groups) })}
      ${input("spec.engine.name", { options: [["builtin", "tideserve builtin"], ["vllm", "vLLM"], ["sglang", "SGLang"]] })}
      ${input("spec.engine.version", { hint: t("wiz.engineVersion.hint") })}
      ${input("spec.deployment.mode", { options: ["single", "multiNode", "pdDisaggregated"].map((m) => [m, t(`wiz.mode.${m}`)]) })}
      ${mode === "multiNode" && input("spec.deployment.nodesPerInstance", { type: "number" })}
      ${mode === "pdDisaggregated" && input("spec.deployment.prefillReplicas", { type: "number" })}
      ${mode === "pdDisaggregated" && input("spec.deployment.decodeReplicas", { type: "number" })}
      ${mode !== "pdDisaggregated" && input("spec.replicas", { type: "number" })}
      ${input("spec.resources.cpu", { type: "number" })}
      ${input("spec.resources.memory", { hint: t("wiz.memory.hint") })}
      ${input("spec.resources.gpus", { type: "number" })}
      <h3>${t("wiz.access")}</h3>
      ${input("spec.access.servicePort", { type: "number" })}
      <${Field} label=${t("wiz.targetPort")}><input value=${base?.spec?.access?.targetPort ?? 60000} disabled /><//>
      ${input("spec.access.exposure", { options: [["internal", t("access.internal")], ["external", t("access.external")]] })}
      <h3>${t("wiz.advanced")}</h3>
      ${["tpSize", "ppSize", "dpSize", "maxModelLen", "maxBatchSize", "gpuMemoryUtilization", "maxNumBatchedTokens"].map((p) => input(`spec.parameters.${p}`, { type: "number", hint: t(`wiz.${p}.hint`) === `wiz.${p}.hint` ? "" : t(`wiz.${p}.hint`) }))}
      <div class="wide">${input("spec.env", { area: true, hint: t("wiz.env.hint") })}</div>
      <h3>${t("wiz.routing")}</h3>
      ${input("spec.routing.policy", { options: ["prefix_aware", "least_requests", "least_kv", "round_robin", "session"].map((p) => [p, p]) })}
      ${ROUTING_FIELDS.map((f) => input(`spec.routing.${f}`, { type: "number", hint: t("wiz.optional") }))}
      <h3>${t("wiz.autoscaling")}</h3>
      <p class="wide hint">${t("wiz.autoscaling.hint")}</p>
      ${input("spec.autoscaling.minReplicas", { type: "number" })}
      ${input("spec.autoscaling.maxReplicas", { type: "number" })}
      ${input("spec.autoscaling.targets.0.metric", { options: [["", "—"], ...METRICS.map((m) => [m, t(`wiz.metric.${m}`)])] })}
      ${input("spec.autoscaling.targets.0.value", { type: "number" })}
      ${input("spec.autoscaling.idleToZeroSeconds", { type: "number", hint: t("wiz.idleToZeroSeconds.hint") })}
    </div>
    <${Verdict} fit=${fit} />
    <div class="actions">
      <button type="button" onClick=${() => history.back()}>${t("cancel")}</button>
      <button class="primary" type="submit" disabled=${busy} data-testid="submit">${t(editing ? "wiz.submit.edit" : "wiz.submit.create")}</button>
    </div>
  </form>`;
}

function Verdict({ fit }) {
  if (!fit) return null;
  if (fit === "checking") return html`<div class="verdict muted">${t("wiz.fit.checking")}</div>`;
  const e = fit.estimate || {};
  return html`<div class=${fit.fits ? "verdict ok" : "verdict bad"} data-testid="fit">
    <strong>${t("wiz.fit")}:</strong> ${fit.message}
    ${e.neededBytes ? html` <span class="hint">(${t("wiz.needs", { n: bytes(e.neededBytes) })})</span>` : null}
    ${e.suggestion ? html`<div>${e.suggestion}</div>` : null}
  </div>`;
}
