// Monitoring at three levels (PRODUCT.md "Observability"): a service's daily health (ServiceMonitoring,
// shown in the service detail page), and on this page a cluster's water level for capacity planning
// with its nodes and services, and one node's figures to locate a bottleneck.
import { html, useState, useApi, register, t, go, bytes, num, pct, ms, Table, Status } from "../lib.js";
import { Chart } from "../chart.js";

const WINDOWS = ["15m", "1h", "6h", "1d", "7d", "30d"];
const EVERY = 5000; // the collector writes every few seconds; faster polling shows nothing new

const rate = (v) => (v == null ? "–" : `${num(v)}/s`);
// An idle instance uses a few thousandths of a core: two decimals would read as zero.
const cores = (v) => (v == null ? "–" : t("mon.cores", { n: num(v, Math.abs(v) < 0.1 ? 3 : 2) }));
// Gauges like running requests are averages over a collection round, so not always whole.
const count = (v) => num(v);
const whole = (v, unit) => (v == null ? "–" : `${Math.round(v)} ${unit}`);
// "50 ms / 60 ms" → "50 / 60 ms": a tile stays one line.
function pair(a, b, format) {
  const [x, y] = [format(a), format(b)];
  const unit = / \S+$/.exec(x)?.[0];
  return unit && y.endsWith(unit) ? `${x.slice(0, -unit.length)} / ${y}` : `${x} / ${y}`;
}
const ratioOf = (part, total) => (part != null && total ? part / total : null);
const enc = encodeURIComponent;

function WindowPicker({ value, onChange }) {
  return html`<div class="row" role="group" aria-label=${t("mon.window")} data-testid="window">
    ${WINDOWS.map((w) => html`<button class=${w === value ? "small primary" : "small"} onClick=${() => onChange(w)} data-window=${w}>${w}</button>`)}
  </div>`;
}

function Stat({ label, value, sub }) {
  return html`<div class="stat"><div class="k">${label}</div><div class="v">${value}</div>${sub && html`<div class="k">${sub}</div>`}</div>`;
}

// A share of capacity as a bar; past 80% it turns amber and past 90% red, where KV-cache and
// capacity alarms usually sit.
function Meter({ ratio }) {
  const level = ratio > 0.9 ? "bad" : ratio > 0.8 ? "warn" : "";
  return html`<div class="meter"><div class=${level} style=${{ width: `${Math.min(100, (ratio || 0) * 100)}%` }}></div></div>`;
}

// The data of one polled view, or a line saying why there is none (a 503 when Prometheus is down).
// One wrapper element in every state: Preact misplaces siblings when a component's root switches
// between a single element and a fragment.
function Loaded({ state, children }) {
  let body = children;
  if (state.error && !state.data) body = () => html`<p class="error" role="alert">${state.error.message}</p>`;
  else if (!state.data) body = () => html`<p class="muted">${t("loading")}</p>`;
  return html`<div>${body(state.data)}</div>`;
}

// Axis labels have a fixed width, so a unit word (cores) goes in a chart's title, not its ticks.
function Charts({ series, charts }) {
  return html`<div class="charts">${charts.map(([title, lines, unit]) => html`<${Chart} key=${title} title=${title} series=${series} lines=${lines} unit=${unit} />`)}</div>`;
}

const hasPoints = (series, key) => (series[key] || []).length > 0;

// ---- service ----

const p3 = (metric) => [[`${metric}_p50`, "p50"], [`${metric}_p90`, "p90"], [`${metric}_p99`, "p99"]];

function serviceCharts(series) {
  const charts = [
    [t("mon.ttft"), p3("ttft"), ms],
    [t("mon.tpot"), p3("tpot"), ms],
    [t("mon.e2e"), p3("e2e"), ms],
    [t("mon.traffic"), [["requests_per_s", t("mon.engineReqs")], ["gateway_requests_per_s", t("mon.gatewayReqs")], ["client_errors_per_s", "4xx/s"], ["server_errors_per_s", "5xx/s"]], rate],
    [t("mon.queue"), [["running", t("mon.running")], ["waiting", t("mon.waiting")]], count],
    [t("mon.cache"), [["kv_cache_usage", t("mon.kv")], ["prefix_cache_hit_rate", t("mon.prefix")]], pct],
    [t("mon.tokens"), [["prompt_tokens_per_s", t("mon.prompt")], ["generation_tokens_per_s", t("mon.generation")]], rate],
    [t("mon.cpuPerInstanceChart"), [["cpu_cores_per_instance", t("mon.cpu")]], num],
    [t("mon.memPerInstance"), [["memory_bytes_per_instance", t("mon.memory")]], bytes],
    [t("mon.instances"), [["instances", t("mon.total")], ["ready_instances", t("mon.ready")]], count],
  ];
  // A service on CPUs has no GPU figures at all: no empty chart for them.
  if (hasPoints(series, "gpu_utilization")) charts.push([t("mon.gpuUtil"), [["gpu_utilization", t("mon.gpu")]], pct]);
  return charts;
}

function ServiceStats({ c }) {
  return html`<div class="stats wide" data-testid="service-stats">
    <${Stat} label=${t("mon.ttft") + " p50 / p99"} value=${pair(c.ttft_p50, c.ttft_p99, ms)} />
    <${Stat} label=${t("mon.tpot") + " p50 / p99"} value=${pair(c.tpot_p50, c.tpot_p99, ms)} />
    <${Stat} label=${t("mon.e2e") + " p50 / p99"} value=${pair(c.e2e_p50, c.e2e_p99, ms)} />
    <${Stat} label=${t("mon.reqs")} value=${rate(c.requests_per_s)} sub=${t("mon.viaGateway", { v: rate(c.gateway_requests_per_s) })} />
    <${Stat} label=${t("mon.errors")} value=${pair(c.client_errors_per_s, c.server_errors_per_s, num)} sub="4xx / 5xx" />
    <${Stat} label=${t("mon.runningWaiting")} value=${pair(c.running, c.waiting, count)} />
    <${Stat} label=${t("mon.kv")} value=${pct(c.kv_cache_usage)} />
    <${Stat} label=${t("mon.prefix")} value=${pct(c.prefix_cache_hit_rate)} />
    <${Stat} label=${t("mon.tokens")} value=${rate(c.generation_tokens_per_s)} sub=${t("mon.promptRate", { v: rate(c.prompt_tokens_per_s) })} />
    <${Stat} label=${t("mon.cpuPerInstance")} value=${cores(c.cpu_cores_per_instance)} />
    <${Stat} label=${t("mon.memPerInstance")} value=${bytes(c.memory_bytes_per_instance)} />
    <${Stat} label=${t("mon.gpuUtil")} value=${pct(c.gpu_utilization)} />
    <${Stat} label=${t("mon.instances")} value=${pair(c.ready_instances, c.instances, count)} sub=${t("mon.readyTotal")} />
  </div>`;
}

// The figures every instance reports, for a service's and a node's instance tables.
const instanceColumns = () => [
  { key: "up", label: t("status"), render: (r) => html`<${Status} value=${r.up ? "Ready" : "NotReady"} />` },
  { key: "running", label: t("mon.running"), render: (r) => count(r.running) },
  { key: "waiting", label: t("mon.waiting"), render: (r) => count(r.waiting) },
  { key: "kv", label: t("mon.kv"), render: (r) => pct(r.kv_cache_usage) },
  { key: "prefix", label: t("mon.prefix"), render: (r) => pct(r.prefix_cache_hit_rate) },
  { key: "rps", label: t("mon.reqs"), render: (r) => rate(r.requests_per_s) },
  { key: "gen", label: t("mon.tokens"), render: (r) => rate(r.generation_tokens_per_s) },
  { key: "cpu", label: t("mon.cpu"), render: (r) => cores(r.cpu_cores) },
  { key: "mem", label: t("mon.memory"), render: (r) => bytes(r.memory_bytes) },
  { key: "gpu", label: t("mon.gpu"), render: (r) => pct(r.gpu_utilization) },
  { key: "gpumem", label: t("mon.gpuMem"), render: (r) => bytes(r.gpu_memory_bytes) },
];

const members = (byId) => Object.entries(byId || {}).sort(([a], [b]) => a.localeCompare(b)).map(([id, v]) => ({ id, ...v }));

export function ServiceMonitoring({ service }) {
  const [win, setWin] = useState("1h");
  const state = useApi(`/api/v1/services/${enc(service)}/metrics?window=${win}`, { every: EVERY });
  return html`<section data-testid="service-monitoring">
    <div class="bar"><span class="hint grow">${t("mon.refresh")}</span><${WindowPicker} value=${win} onChange=${setWin} /></div>
    <${Loaded} state=${state}>${(v) => html`
      <${ServiceStats} c=${v.current} />
      <${Charts} series=${v.series} charts=${serviceCharts(v.series)} />
      <h3 class="section">${t("mon.instanceTable")}</h3>
      <${Table} testid="instance-metrics" rows=${members(v.instances)} empty=${t("mon.noInstances")}
        columns=${[{ key: "id", label: t("mon.instance") }, ...instanceColumns()]} />`}
    <//>
  </section>`;
}

// ---- cluster ----

// One resource's water level: what instances asked for and what they use, against capacity.
function Level({ title, capacity, rows }) {
  return html`<div class="level" data-level=${title}>
    <h4>${title} <span class="muted">${capacity || t("mon.noGpus")}</span></h4>
    ${capacity ? rows.map(([label, ratio, figure]) => html`<div class="level-row">
      <span class="muted">${label}</span><${Meter} ratio=${ratio} /><span>${pct(ratio)}</span><span class="muted">${figure}</span>
    </div>`) : null}
  </div>`;
}

function WaterLevels({ c, w }) {
  return html`<div class="panel" data-testid="water-levels"><h3>${t("mon.waterLevels")}</h3><div class="levels">
    <${Level} title=${t("mon.cpu")} capacity=${cores(c.cpu_cores)} rows=${[
      [t("mon.allocated"), w.cpu_allocated, cores(c.cpu_allocated_cores)],
      [t("mon.used"), w.cpu_used, cores(c.cpu_used_cores)],
    ]} />
    <${Level} title=${t("mon.memory")} capacity=${bytes(c.memory_bytes)} rows=${[
      [t("mon.allocated"), w.memory_allocated, bytes(c.memory_allocated_bytes)],
      [t("mon.used"), w.memory_used, bytes(c.memory_used_bytes)],
    ]} />
    <${Level} title=${t("mon.gpu")} capacity=${c.gpus && t("mon.gpuCount", { n: count(c.gpus) })} rows=${[
      [t("mon.allocated"), w.gpus_allocated, count(c.gpus_allocated)],
      [t("mon.utilization"), c.gpu_utilization, ""],
    ]} />
    <${Level} title=${t("mon.gpuMem")} capacity=${c.gpu_memory_bytes && bytes(c.gpu_memory_bytes)} rows=${[
      [t("mon.used"), w.gpu_memory_used, bytes(c.gpu_memory_used_bytes)],
    ]} />
  </div></div>`;
}

function clusterCharts(series, c) {
  const charts = [
    [t("mon.cpuChart"), [["cpu_cores", t("mon.capacity")], ["cpu_allocated_cores", t("mon.allocated")], ["cpu_used_cores", t("mon.used")]], num],
    [t("mon.memory"), [["memory_bytes", t("mon.capacity")], ["memory_allocated_bytes", t("mon.allocated")], ["memory_used_bytes", t("mon.used")]], bytes],
    [t("mon.counts"), [["nodes", t("mon.nodes")], ["services", t("mon.services")], ["instances", t("mon.instances")]], count],
  ];
  if (c.gpus) {
    charts.push(
      [t("mon.gpu"), [["gpus", t("mon.capacity")], ["gpus_allocated", t("mon.allocated")]], count],
      [t("mon.gpuMem"), [["gpu_memory_bytes", t("mon.capacity")], ["gpu_memory_used_bytes", t("mon.used")]], bytes],
    );
  }
  if (hasPoints(series, "gpu_utilization")) charts.push([t("mon.gpuUtil"), [["gpu_utilization", t("mon.gpu")]], pct]);
  return charts;
}

const gpuModels = (gpus) => [...new Set((gpus || []).map((g) => g.name))].join(", ");
const gpuSummary = (gpus) => (gpus?.length ? `${gpus.length} × ${gpuModels(gpus)}` : "–");

function NodesTable({ cluster, nodes, figures }) {
  const rows = nodes.map((n) => ({ ...n, m: figures[n.name] || {} }));
  return html`<${Table} testid="nodes" rows=${rows} empty=${t("mon.noNodes")} columns=${[
    { key: "name", label: t("name"), render: (n) => html`<a href="#/monitoring/${enc(cluster)}/${enc(n.name)}" data-node=${n.name}>${n.name}</a>` },
    { key: "status", label: t("status"), render: (n) => html`<${Status} value=${n.status} />` },
    { key: "cpu", label: t("mon.cpuUsed"), render: (n) => html`${cores(n.m.cpu_used_cores)} / ${num(n.m.cpu_cores ?? n.cpus)}<${Meter} ratio=${ratioOf(n.m.cpu_used_cores, n.m.cpu_cores)} />` },
    { key: "mem", label: t("mon.memUsed"), render: (n) => html`${bytes(n.m.memory_used_bytes)} / ${bytes(n.m.memory_bytes ?? n.memoryBytes)}<${Meter} ratio=${ratioOf(n.m.memory_used_bytes, n.m.memory_bytes)} />` },
    { key: "gpus", label: t("mon.gpus"), render: (n) => gpuSummary(n.gpus) },
    { key: "instances", label: t("mon.instances"), render: (n) => count(n.m.instances ?? n.instances.length) },
  ]} />`;
}

function ServicesTable({ figures }) {
  const rows = Object.entries(figures).sort(([a], [b]) => a.localeCompare(b)).map(([name, f]) => ({ name, ...f }));
  return html`<${Table} testid="services" rows=${rows} empty=${t("mon.noServices")} columns=${[
    { key: "name", label: t("name"), render: (s) => html`<a href="#/services/${enc(s.name)}/monitoring" data-service=${s.name}>${s.name}</a>` },
    { key: "ttft50", label: `${t("mon.ttft")} p50`, render: (s) => ms(s.ttft_p50) },
    { key: "ttft99", label: `${t("mon.ttft")} p99`, render: (s) => ms(s.ttft_p99) },
    { key: "rps", label: t("mon.reqs"), render: (s) => rate(s.requests_per_s) },
    { key: "kv", label: t("mon.kv"), render: (s) => html`${pct(s.kv_cache_usage)}<${Meter} ratio=${s.kv_cache_usage} />` },
    { key: "instances", label: t("mon.instances"), render: (s) => `${count(s.ready_instances)} / ${count(s.instances)}` },
  ]} />`;
}

function ClusterView({ cluster, win }) {
  const view = useApi(`/api/v1/clusters/${enc(cluster)}/metrics?window=${win}`, { every: EVERY });
  const overview = useApi("/api/v1/monitoring/overview", { every: EVERY });
  const nodes = useApi("/api/v1/nodes", { every: EVERY });
  const mine = nodes.data?.filter((n) => n.cluster === cluster);
  // Service figures carry no cluster: a service belongs here when one of its instances runs here.
  const here = new Set(mine?.flatMap((n) => n.instances.map((i) => i.service)));
  const services = Object.fromEntries(Object.entries(overview.data?.services || {}).filter(([name]) => here.has(name)));
  return html`
    <${Loaded} state=${view}>${(v) => html`
      <${WaterLevels} c=${v.current} w=${v.water_levels} />
      <${Charts} series=${v.series} charts=${clusterCharts(v.series, v.current)} />`}
    <//>
    <h3 class="section">${t("mon.nodes")}</h3>
    <${Loaded} state=${nodes}>${() => html`<${NodesTable} cluster=${cluster} nodes=${mine} figures=${overview.data?.nodes || {}} />`}<//>
    <h3 class="section">${t("mon.services")}</h3>
    <${Loaded} state=${overview}>${() => html`<${ServicesTable} figures=${services} />`}<//>`;
}

// ---- node ----

function nodeCharts() {
  return [
    [t("mon.cpuChart"), [["cpu_cores", t("mon.capacity")], ["cpu_used_cores", t("mon.used")]], num],
    [t("mon.memory"), [["memory_bytes", t("mon.capacity")], ["memory_used_bytes", t("mon.used")]], bytes],
    [t("mon.instances"), [["instances", t("mon.instances")]], count],
  ];
}

function GpusTable({ figures, gpus }) {
  const names = Object.fromEntries((gpus || []).map((g) => [String(g.index), g.name]));
  const rows = members(figures).map((g) => ({ ...g, name: names[g.id] }));
  return html`<${Table} testid="gpus" rows=${rows} empty=${t("mon.noGpus")} columns=${[
    { key: "id", label: "#" },
    { key: "name", label: t("mon.model") },
    { key: "util", label: t("mon.utilization"), render: (g) => html`${pct(g.utilization)}<${Meter} ratio=${g.utilization} />` },
    { key: "mem", label: t("mon.gpuMem"), render: (g) => html`${bytes(g.memory_used_bytes)} / ${bytes(g.memory_bytes)}<${Meter} ratio=${ratioOf(g.memory_used_bytes, g.memory_bytes)} />` },
    { key: "temp", label: t("mon.temperature"), render: (g) => whole(g.temperature_c, "°C") },
    { key: "power", label: t("mon.power"), render: (g) => whole(g.power_w, "W") },
  ]} />`;
}

function NodeView({ cluster, node, win, setWin }) {
  const view = useApi(`/api/v1/nodes/${enc(node)}/metrics?window=${win}`, { every: EVERY });
  const info = useApi(`/api/v1/nodes/${enc(node)}`, { every: EVERY });
  const serviceOf = Object.fromEntries((info.data?.instances || []).map((i) => [i.id, i.service]));
  return html`<div class="bar">
      <a href="#/monitoring/${enc(cluster)}" data-testid="back">← ${cluster}</a>
      <h2>${t("mon.node")} ${node} ${info.data && html`<${Status} value=${info.data.status} />`}</h2>
      <${WindowPicker} value=${win} onChange=${setWin} />
    </div>
    <${Loaded} state=${view}>${(v) => html`
      <div class="stats">
        <${Stat} label=${t("mon.cpuUsed")} value=${cores(v.current.cpu_used_cores)} sub=${t("mon.of", { v: cores(v.current.cpu_cores) })} />
        <${Stat} label=${t("mon.memUsed")} value=${bytes(v.current.memory_used_bytes)} sub=${t("mon.of", { v: bytes(v.current.memory_bytes) })} />
        <${Stat} label=${t("mon.instances")} value=${count(v.current.instances)} />
        <${Stat} label=${t("mon.gpus")} value=${info.data?.gpus?.length || "–"} sub=${gpuModels(info.data?.gpus)} />
      </div>
      <${Charts} series=${v.series} charts=${nodeCharts()} />
      <h3 class="section">${t("mon.gpus")}</h3>
      <${GpusTable} figures=${v.gpus} gpus=${info.data?.gpus} />
      <h3 class="section">${t("mon.instanceTable")}</h3>
      <${Table} testid="node-instances" rows=${members(v.instances)} empty=${t("mon.noInstances")} columns=${[
        { key: "id", label: t("mon.instance") },
        { key: "service", label: t("mon.service"), render: (r) => (serviceOf[r.id] ? html`<a href="#/services/${enc(serviceOf[r.id])}/monitoring">${serviceOf[r.id]}</a>` : "–") },
        ...instanceColumns(),
      ]} />`}
    <//>`;
}

// ---- the page: #/monitoring[/CLUSTER[/NODE]] ----

export function MonitoringPage({ route }) {
  const [win, setWin] = useState("1h");
  const clusters = useApi("/api/v1/clusters");
  const [, wanted, node] = route;
  const cluster = wanted || clusters.data?.[0]?.name;
  if (cluster && node) return html`<${NodeView} cluster=${cluster} node=${node} win=${win} setWin=${setWin} />`;
  return html`<div class="bar">
      <h2>${t("nav.monitoring")}</h2>
      <select data-testid="cluster-select" aria-label=${t("mon.cluster")} style="width:auto" value=${cluster} onChange=${(e) => go("monitoring", e.target.value)}>
        ${(clusters.data || []).map((c) => html`<option value=${c.name}>${c.name}</option>`)}
      </select>
      <${WindowPicker} value=${win} onChange=${setWin} />
    </div>
    ${clusters.data && !clusters.data.length ? html`<p class="muted">${t("mon.noClusters")}</p>` : null}
    ${cluster && html`<${ClusterView} key=${cluster} cluster=${cluster} win=${win} />`}`;
}

register({
  en: {
    "mon.window": "Time window", "mon.waterLevels": "Water levels", "mon.refresh": "Refreshes every 5 s.", "mon.cluster": "Cluster", "mon.node": "Node",
    "mon.cores": "{n} cores", "mon.ttft": "TTFT", "mon.tpot": "TPOT", "mon.e2e": "E2E latency",
    "mon.traffic": "Requests and errors", "mon.engineReqs": "engine req/s", "mon.gatewayReqs": "gateway req/s",
    "mon.queue": "Running and waiting requests", "mon.running": "Running", "mon.waiting": "Waiting",
    "mon.cache": "KV cache", "mon.kv": "KV cache use", "mon.prefix": "Prefix cache hits",
    "mon.tokens": "Tokens/s", "mon.prompt": "prompt", "mon.generation": "generation",
    "mon.cpuPerInstance": "CPU per instance", "mon.cpuPerInstanceChart": "CPU per instance (cores)", "mon.cpuChart": "CPU (cores)", "mon.memPerInstance": "Memory per instance",
    "mon.cpu": "CPU", "mon.memory": "Memory", "mon.gpu": "GPU", "mon.gpus": "GPUs", "mon.gpuMem": "GPU memory",
    "mon.gpuUtil": "GPU utilization", "mon.instances": "Instances", "mon.instance": "Instance", "mon.total": "total",
    "mon.ready": "ready", "mon.readyTotal": "ready / total", "mon.reqs": "Requests/s", "mon.errors": "Errors/s",
    "mon.viaGateway": "gateway {v}", "mon.promptRate": "generation · prompt {v}", "mon.runningWaiting": "Running / waiting",
    "mon.instanceTable": "Instances", "mon.noInstances": "No instance reports figures now.",
    "mon.allocated": "allocated", "mon.used": "used", "mon.utilization": "Utilization", "mon.capacity": "capacity",
    "mon.gpuCount": "{n} GPUs", "mon.noGpus": "No GPUs", "mon.counts": "Nodes, services, instances",
    "mon.nodes": "Nodes", "mon.services": "Services", "mon.service": "Service", "mon.cpuUsed": "CPU used",
    "mon.memUsed": "Memory used", "mon.of": "of {v}", "mon.model": "Model", "mon.temperature": "Temperature", "mon.power": "Power",
    "mon.noNodes": "No nodes in this cluster.", "mon.noServices": "No service runs in this cluster now.",
    "mon.noClusters": "No cluster yet: create one under Resources.",
  },
  zh: {
    "mon.window": "时间范围", "mon.waterLevels": "资源水位", "mon.refresh": "每 5 秒刷新。", "mon.cluster": "集群", "mon.node": "节点",
    "mon.cores": "{n} 核", "mon.ttft": "首字延迟 TTFT", "mon.tpot": "每字延迟 TPOT", "mon.e2e": "端到端延迟",
    "mon.traffic": "请求与错误", "mon.engineReqs": "引擎请求/秒", "mon.gatewayReqs": "网关请求/秒",
    "mon.queue": "运行中与排队请求", "mon.running": "运行中", "mon.waiting": "排队中",
    "mon.cache": "KV 缓存", "mon.kv": "KV 缓存使用率", "mon.prefix": "前缀缓存命中率",
    "mon.tokens": "Token/秒", "mon.prompt": "输入", "mon.generation": "生成",
    "mon.cpuPerInstance": "单实例 CPU", "mon.cpuPerInstanceChart": "单实例 CPU（核）", "mon.cpuChart": "CPU（核）", "mon.memPerInstance": "单实例内存",
    "mon.cpu": "CPU", "mon.memory": "内存", "mon.gpu": "GPU", "mon.gpus": "GPU", "mon.gpuMem": "GPU 显存",
    "mon.gpuUtil": "GPU 利用率", "mon.instances": "实例", "mon.instance": "实例", "mon.total": "总数",
    "mon.ready": "就绪", "mon.readyTotal": "就绪 / 总数", "mon.reqs": "请求/秒", "mon.errors": "错误/秒",
    "mon.viaGateway": "网关 {v}", "mon.promptRate": "生成 · 输入 {v}", "mon.runningWaiting": "运行中 / 排队中",
    "mon.instanceTable": "实例", "mon.noInstances": "当前没有实例上报数据。",
    "mon.allocated": "已分配", "mon.used": "已使用", "mon.utilization": "利用率", "mon.capacity": "容量",
    "mon.gpuCount": "{n} 张 GPU", "mon.noGpus": "无 GPU", "mon.counts": "节点、服务、实例数",
    "mon.nodes": "节点", "mon.services": "服务", "mon.service": "服务", "mon.cpuUsed": "CPU 使用",
    "mon.memUsed": "内存使用", "mon.of": "共 {v}", "mon.model": "型号", "mon.temperature": "温度", "mon.power": "功率",
    "mon.noNodes": "该集群没有节点。", "mon.noServices": "该集群当前没有运行的服务。",
    "mon.noClusters": "还没有集群：请在“资源管理”中创建。",
  },
});
