// The model plaza: built-in cards and custom models, filtered; a model's record (specs, memory,
// usage guide) with Deploy; registering and deleting custom models.
import {
  api, attempt, bytes, Confirm, Copy, Field, go, html, Modal, query, register, t, Table, toast, useApi, useForm, useState, when,
} from "../lib.js";

register({
  en: {
    "plaza.title": "Model plaza", "plaza.search": "Search models", "plaza.anyTask": "All task types",
    "plaza.anyFamily": "All families", "plaza.anyTag": "All tags", "plaza.count": "{n} models",
    "plaza.none": "No model matches these filters.", "plaza.add": "Add custom model", "plaza.back": "Model plaza",
    "plaza.params": "Parameters", "plaza.active": "{n} active", "plaza.context": "Context",
    "plaza.engines": "Engines", "plaza.custom": "Custom", "plaza.source": "Source",
    "plaza.deploy": "Deploy", "plaza.specs": "Specifications", "plaza.version": "Version", "plaza.vendor": "Vendor",
    "plaza.license": "License", "plaza.released": "Release date", "plaza.family": "Family",
    "plaza.architecture": "Architecture", "plaza.layers": "Layers", "plaza.hidden": "Hidden size",
    "plaza.heads": "Attention heads", "plaza.headsValue": "{heads} (KV {kv}) × {dim}", "plaza.vocab": "Vocabulary",
    "plaza.experts": "Experts", "plaza.expertsValue": "{active} of {n} per token", "plaza.dtype": "Weights dtype",
    "plaza.tasks": "Task types", "plaza.recParams": "Recommended parameters", "plaza.format": "Format",
    "plaza.size": "Size on disk", "plaza.path": "Local path", "plaza.sha256": "SHA-256",
    "plaza.memory": "GPU memory", "plaza.precision": "Precision", "plaza.weights": "Weights",
    "plaza.kvToken": "KV cache per token", "plaza.kvContext": "KV cache for {n} tokens",
    "plaza.rule": "Rule of thumb (weights only; the KV cache comes on top): about 2 bytes per parameter at FP16, 1 at INT8 and 0.5 at INT4. A 7B model wants a GPU of at least 16 GB.",
    "plaza.ruleThis": "For this model's {n} parameters: ~{fp16} at FP16, ~{int8} at INT8, ~{int4} at INT4.",
    "plaza.usage": "Quick start", "plaza.deleteTitle": "Delete custom model {name}",
    "plaza.deleteMessage": "The model's record is removed; services still using it make this fail.",
    "plaza.deleted": "Model deleted.", "plaza.added": "Model {name} registered.",
    "plaza.addTitle": "Add a custom model", "plaza.name": "Name",
    "plaza.nameHint": "Lowercase letters, digits, '-' and '.', starting with a letter.",
    "plaza.sourceHint": "s3://bucket/prefix, hf://org/model, or a path present on every node.",
    "plaza.s3": "S3 access (empty: the platform's default credentials)", "plaza.endpoint": "Endpoint URL",
    "plaza.region": "Region", "plaza.accessKey": "Access key ID", "plaza.secretKey": "Secret access key",
    "plaza.registering": "Fetching and inspecting the model; a remote source can take minutes…",
    "plaza.register": "Register", "plaza.task.chat": "Chat", "plaza.task.reasoning": "Reasoning",
    "plaza.task.code": "Code", "plaza.task.embedding": "Embedding", "plaza.engine.builtin": "tideserve engine",
    "plaza.engine.vllm": "vLLM", "plaza.engine.sglang": "SGLang",
  },
  zh: {
    "plaza.title": "模型广场", "plaza.search": "搜索模型", "plaza.anyTask": "全部任务类型",
    "plaza.anyFamily": "全部模型系列", "plaza.anyTag": "全部标签", "plaza.count": "共 {n} 个模型",
    "plaza.none": "没有符合筛选条件的模型。", "plaza.add": "添加自定义模型", "plaza.back": "模型广场",
    "plaza.params": "参数量", "plaza.active": "激活 {n}", "plaza.context": "上下文",
    "plaza.engines": "推理引擎", "plaza.custom": "自定义", "plaza.source": "来源",
    "plaza.deploy": "部署", "plaza.specs": "规格", "plaza.version": "版本", "plaza.vendor": "厂商",
    "plaza.license": "许可证", "plaza.released": "发布日期", "plaza.family": "模型系列",
    "plaza.architecture": "架构", "plaza.layers": "层数", "plaza.hidden": "隐藏层维度",
    "plaza.heads": "注意力头", "plaza.headsValue": "{heads}（KV {kv}）× {dim}", "plaza.vocab": "词表大小",
    "plaza.experts": "专家", "plaza.expertsValue": "每个 token 激活 {n} 个中的 {active} 个", "plaza.dtype": "权重精度",
    "plaza.tasks": "任务类型", "plaza.recParams": "推荐参数", "plaza.format": "格式",
    "plaza.size": "磁盘占用", "plaza.path": "本地路径", "plaza.sha256": "SHA-256",
    "plaza.memory": "显存需求", "plaza.precision": "精度", "plaza.weights": "权重",
    "plaza.kvToken": "每个 token 的 KV 缓存", "plaza.kvContext": "{n} 个 token 的 KV 缓存",
    "plaza.rule": "经验法则（仅权重，KV 缓存另计）：FP16 每个参数约 2 字节，INT8 约 1 字节，INT4 约 0.5 字节。7B 模型需要至少 16 GB 显存的 GPU。",
    "plaza.ruleThis": "本模型 {n} 参数：FP16 约 {fp16}，INT8 约 {int8}，INT4 约 {int4}。",
    "plaza.usage": "快速开始", "plaza.deleteTitle": "删除自定义模型 {name}",
    "plaza.deleteMessage": "将删除该模型记录；仍有服务使用它时删除会失败。",
    "plaza.deleted": "模型已删除。", "plaza.added": "模型 {name} 已注册。",
    "plaza.addTitle": "添加自定义模型", "plaza.name": "名称",
    "plaza.nameHint": "小写字母、数字、“-”和“.”，以字母开头。",
    "plaza.sourceHint": "s3://bucket/prefix、hf://org/model，或每个节点上都存在的本地路径。",
    "plaza.s3": "S3 访问配置（留空：使用平台默认凭证）", "plaza.endpoint": "Endpoint URL",
    "plaza.region": "区域", "plaza.accessKey": "Access Key ID", "plaza.secretKey": "Secret Access Key",
    "plaza.registering": "正在获取并检查模型；远程来源可能需要几分钟…",
    "plaza.register": "注册", "plaza.task.chat": "对话", "plaza.task.reasoning": "推理",
    "plaza.task.code": "代码", "plaza.task.embedding": "向量", "plaza.engine.builtin": "tideserve 引擎",
    "plaza.engine.vllm": "vLLM", "plaza.engine.sglang": "SGLang",
  },
});

export function PlazaPage({ route }) {
  return route[1] ? html`<${ModelDetail} name=${route[1]} />` : html`<${ModelList} />`;
}

// ---- formatting ----

// 7615616512 → "7.62B", as the API's parametersHuman (which MoE active counts lack).
function count(n) {
  if (!n) return "–";
  for (const [unit, div] of [["T", 1e12], ["B", 1e9], ["M", 1e6]]) if (n >= div) return `${Number((n / div).toPrecision(3))}${unit}`;
  return String(n);
}
const paramsText = (m) => {
  const total = m.parametersHuman || count(m.parameters);
  return m.activeParameters ? `${total} (${t("plaza.active", { n: count(m.activeParameters) })})` : total;
};
const contextText = (n) => (!n ? "–" : n >= 1024 ? `${Math.round(n / 1024)}K` : String(n));
const engineName = (e) => t(`plaza.engine.${e}`);
const deploy = (name) => { location.hash = "#/services/new?model=" + encodeURIComponent(name); };

// ---- list ----

// Filters live in the address (#/plaza?task=chat&q=qwen) so coming Back from a detail page keeps them;
// replaceState, not a new history entry per keystroke.
function useFilters() {
  const [filters, setFilters] = useState(() => Object.fromEntries(query()));
  const set = (key, value) => {
    const next = { ...filters, [key]: value };
    setFilters(next);
    const qs = new URLSearchParams(Object.entries(next).filter(([, v]) => v)).toString();
    history.replaceState(null, "", "#/plaza" + (qs ? `?${qs}` : ""));
  };
  return [filters, set];
}

// Filtered here rather than with the list's query parameters: the whole list is small, it also
// feeds the filter choices, and typing in the search box should not cost a request per key.
function matches(m, { task, family, tag, q }) {
  const text = [m.name, m.displayName, m.family, m.vendor, m.source, ...(m.tags || []), m.description].join(" ").toLowerCase();
  return (!task || m.taskTypes?.includes(task)) && (!family || m.family === family)
    && (!tag || m.tags?.includes(tag)) && (!q || text.includes(q.toLowerCase()));
}

const choices = (models, pick) => [...new Set(models.flatMap(pick))].filter(Boolean).sort();

function ModelList() {
  const { data, error, reload } = useApi("/api/v1/models");
  const [filters, setFilter] = useFilters();
  const [adding, setAdding] = useState(false);
  const models = data || [];
  const shown = models.filter((m) => matches(m, filters));
  const select = (key, all, options, label = (o) => o) => html`<select data-testid=${`filter-${key}`} value=${filters[key] || ""}
      onChange=${(e) => setFilter(key, e.target.value)}>
      <option value="">${all}</option>${options.map((o) => html`<option value=${o}>${label(o)}</option>`)}
    </select>`;
  return html`<section>
    <div class="bar">
      <h2>${t("plaza.title")}</h2>
      <button class="primary" data-testid="add-model" onClick=${() => setAdding(true)}>${t("plaza.add")}</button>
    </div>
    <div class="bar filters">
      <input type="search" class="search" data-testid="model-search" placeholder=${t("plaza.search")}
        value=${filters.q || ""} onInput=${(e) => setFilter("q", e.target.value)} />
      ${select("task", t("plaza.anyTask"), choices(models, (m) => m.taskTypes), (o) => t(`plaza.task.${o}`))}
      ${select("family", t("plaza.anyFamily"), choices(models, (m) => [m.family]))}
      ${select("tag", t("plaza.anyTag"), choices(models, (m) => m.tags))}
      ${data && html`<span class="muted">${t("plaza.count", { n: shown.length })}</span>`}
    </div>
    ${error && html`<p class="error">${error.message}</p>`}
    ${!data ? html`<p class="muted">${t("loading")}</p>`
      : shown.length ? html`<div class="grid" data-testid="models">${shown.map((m) => html`<${ModelCard} key=${m.name} m=${m} />`)}</div>`
      : html`<p class="muted">${t("plaza.none")}</p>`}
    ${adding && html`<${AddModel} onClose=${() => setAdding(false)} onAdded=${reload} />`}
  </section>`;
}

function ModelCard({ m }) {
  return html`<a class="card model-card" href=${"#/plaza/" + encodeURIComponent(m.name)} data-testid="model-card" data-name=${m.name}>
    <h3>${m.displayName || m.name}</h3>
    <div class="muted mono">${m.name}</div>
    <dl class="kv small">
      <dt>${t("plaza.params")}</dt><dd>${paramsText(m)}</dd>
      <dt>${t("plaza.context")}</dt><dd>${contextText(m.maxContext)}</dd>
      <dt>${t("plaza.engines")}</dt><dd>${(m.recommendedEngines || []).map(engineName).join(" · ")}</dd>
      ${m.kind === "custom" && html`<dt>${t("plaza.source")}</dt><dd class="mono clip">${m.source}</dd>`}
    </dl>
    <${Tags} m=${m} />
  </a>`;
}

function Tags({ m }) {
  return html`<div class="tags">
    ${m.kind === "custom" && html`<span class="tag custom">${t("plaza.custom")}</span>`}
    ${(m.taskTypes || []).map((x) => html`<span class="tag task">${t(`plaza.task.${x}`)}</span>`)}
    ${(m.tags || []).filter((x) => x !== "custom").map((x) => html`<span class="tag">${x}</span>`)}
  </div>`;
}

// ---- detail ----

function ModelDetail({ name }) {
  const { data: m, error } = useApi(`/api/v1/models/${encodeURIComponent(name)}`);
  const [deleting, setDeleting] = useState(false);
  if (error) return html`<p><a href="#/plaza">← ${t("plaza.back")}</a></p><p class="error">${error.message}</p>`;
  if (!m) return html`<p class="muted">${t("loading")}</p>`;
  const remove = async () => {
    const ok = await attempt(async () => { await api(`/api/v1/models/${encodeURIComponent(name)}`, { method: "DELETE" }); return true; }, t("plaza.deleted"));
    if (ok) go("plaza");
  };
  return html`<section data-testid="model-detail">
    <p class="crumbs"><a href="#/plaza">← ${t("plaza.back")}</a></p>
    <div class="bar">
      <h2>${m.displayName || m.name}</h2>
      ${m.kind === "custom" && html`<button class="danger" data-testid="delete-model" onClick=${() => setDeleting(true)}>${t("delete")}</button>`}
      <button class="primary" data-testid="deploy" onClick=${() => deploy(m.name)}>${t("plaza.deploy")}</button>
    </div>
    <${Tags} m=${m} />
    ${m.description && html`<p class="lead">${m.description}</p>`}
    <div class="panel"><h3>${t("plaza.specs")}</h3><${Specs} m=${m} /></div>
    <div class="panel" data-testid="memory"><h3>${t("plaza.memory")}</h3><${Memory} m=${m} /></div>
    ${m.usage && html`<div class="panel" data-testid="usage"><h3>${t("plaza.usage")}</h3><${Usage} text=${m.usage} /></div>`}
    ${deleting && html`<${Confirm} title=${t("plaza.deleteTitle", { name: m.name })} message=${t("plaza.deleteMessage")}
      confirmText=${m.name} action=${remove} onClose=${() => setDeleting(false)} />`}
  </section>`;
}

// One list of [label, value] rows for plaza cards and custom models alike; rows without a value drop out.
function specRows(m) {
  const a = m.architecture || {};
  const meta = m.metadata || {};
  const rec = Object.entries(m.recommendedParameters || {});
  return [
    ["plaza.version", m.version], ["plaza.vendor", m.vendor], ["plaza.license", m.license],
    ["plaza.released", m.releaseDate], ["plaza.family", m.family], ["plaza.source", m.source && html`<code>${m.source}</code>`],
    ["plaza.architecture", a.type || meta.architecture], ["plaza.format", meta.format],
    ["plaza.params", m.parameters && `${paramsText(m)} · ${m.parameters.toLocaleString()}`],
    ["plaza.dtype", m.dtype || meta.dtype], ["plaza.context", m.maxContext && `${contextText(m.maxContext)} · ${m.maxContext.toLocaleString()}`],
    ["plaza.layers", a.layers || meta.layers], ["plaza.hidden", a.hiddenSize || meta.hiddenSize],
    ["plaza.heads", (a.heads || meta.heads) && t("plaza.headsValue", { heads: a.heads || meta.heads, kv: a.kvHeads || meta.kvHeads, dim: a.headDim || meta.headDim })],
    ["plaza.experts", a.experts && t("plaza.expertsValue", { active: a.activeExperts, n: a.experts })],
    ["plaza.vocab", (a.vocabSize || meta.vocabSize)?.toLocaleString()],
    ["plaza.tasks", m.taskTypes?.map((x) => t(`plaza.task.${x}`)).join(", ")],
    ["plaza.engines", m.recommendedEngines?.map(engineName).join(", ")],
    ["plaza.recParams", rec.length && html`<div class="tags">${rec.map(([k, v]) => html`<code class="tag">${k}=${v}</code>`)}</div>`],
    ["plaza.size", meta.sizeBytes && bytes(meta.sizeBytes)], ["plaza.path", m.path && html`<code>${m.path}</code>`],
    ["plaza.sha256", m.sha256 && html`<code>${m.sha256}</code>`], ["created", m.createdAt && when(m.createdAt)],
  ].filter(([, v]) => v);
}

function Specs({ m }) {
  return html`<dl class="kv" data-testid="specs">${specRows(m).map(([k, v]) => html`<dt>${t(k)}</dt><dd>${v}</dd>`)}</dl>`;
}

// The detail's `memory` estimates per precision when the API gives them, and always the rule of thumb.
function Memory({ m }) {
  const ctx = m.recommendedParameters?.maxModelLen || m.maxContext;
  const columns = [
    { key: "precision", label: t("plaza.precision") },
    { key: "weightsBytes", label: t("plaza.weights"), render: (r) => bytes(r.weightsBytes) },
    { key: "kvBytesPerToken", label: t("plaza.kvToken"), render: (r) => bytes(r.kvBytesPerToken) },
    ...(ctx ? [{ key: "kv", label: t("plaza.kvContext", { n: contextText(ctx) }), render: (r) => bytes(r.kvBytesPerToken * ctx) }] : []),
  ];
  const p = m.parameters;
  return html`
    ${m.memory?.length > 0 && html`<${Table} testid="memory-table" columns=${columns} rows=${m.memory} rowKey=${(r) => r.precision} />`}
    <p class="hint">${t("plaza.rule")}</p>
    ${p && html`<p class="hint">${t("plaza.ruleThis", { n: count(p), fp16: bytes(p * 2), int8: bytes(p), int4: bytes(p / 2) })}</p>`}`;
}

// The card's usage is markdown with fenced code: text paragraphs (with `inline code`) and fenced
// blocks with a copy button; nothing else of markdown appears in the cards, so no library.
function Usage({ text }) {
  const parts = text.split(/```[\w-]*\n([\s\S]*?)```/); // odd indices: the fenced code
  return html`<div class="usage">${parts.map((part, i) => (i % 2 ? html`<${Copy} text=${part.trimEnd()} />` : paragraphs(part)))}</div>`;
}

function paragraphs(text) {
  return text.split(/\n\s*\n/).map((p) => p.trim()).filter(Boolean)
    .map((p) => html`<p>${p.split("`").map((s, i) => (i % 2 ? html`<code>${s}</code>` : s))}</p>`);
}

// ---- custom models ----

const S3_FIELDS = [["s3.endpointUrl", "plaza.endpoint"], ["s3.region", "plaza.region"], ["s3.accessKeyId", "plaza.accessKey"], ["s3.secretAccessKey", "plaza.secretKey"]];

function modelBody({ name, source, ...rest }) {
  const body = { name: name.trim(), source: source.trim() };
  const s3 = Object.fromEntries(S3_FIELDS.map(([k]) => [k.slice(3), rest[k].trim()]).filter(([, v]) => v));
  if (source.startsWith("s3://") && Object.keys(s3).length) body.s3 = s3;
  return body;
}

function AddModel({ onClose, onAdded }) {
  const form = useForm({ name: "", source: "", ...Object.fromEntries(S3_FIELDS.map(([k]) => [k, ""])) });
  const save = async (e) => {
    e.preventDefault();
    const m = await form.submit((v) => api("/api/v1/models", { method: "POST", body: modelBody(v) }));
    if (!m) return;
    toast(t("plaza.added", { name: m.name }), "ok");
    onAdded();
    onClose();
  };
  return html`<${Modal} title=${t("plaza.addTitle")} onClose=${onClose}>
    <form data-testid="model-form" novalidate onSubmit=${save}>
      <${Field} label=${t("plaza.name")} error=${form.error("name")} hint=${t("plaza.nameHint")}><input ...${form.bind("name")} autocomplete="off" /><//>
      <${Field} label=${t("plaza.source")} error=${form.error("source")} hint=${t("plaza.sourceHint")}><input ...${form.bind("source")} autocomplete="off" /><//>
      ${form.values.source.startsWith("s3://") && html`<fieldset><legend>${t("plaza.s3")}</legend>
        ${S3_FIELDS.map(([k, label]) => html`<${Field} label=${t(label)} error=${form.error(k)}>
          <input ...${form.bind(k)} type=${k.endsWith("secretAccessKey") ? "password" : "text"} autocomplete="off" /><//>`)}
      </fieldset>`}
      ${form.busy && html`<p class="hint">${t("plaza.registering")}</p>`}
      <div class="actions">
        <button type="button" onClick=${onClose}>${t("cancel")}</button>
        <button class="primary" type="submit" disabled=${form.busy} data-testid="submit-model">${t("plaza.register")}</button>
      </div>
    </form>
  <//>`;
}
