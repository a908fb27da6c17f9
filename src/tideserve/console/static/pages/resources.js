// Resources: application clusters → resource groups → nodes (machines). Each level can be created and
// deleted here; the API enforces the order (a group only when empty, a cluster only without groups)
// and its 409 message is shown as is, since it names what to remove first.
import {
  api, attempt, bytes, Confirm, Field, go, html, Modal, num, pct, register, Status, t, Table, Tabs, toast, useApi, useForm, useState, when,
} from "../lib.js";

register({
  en: {
    "res.title": "Resources", "res.clusters": "Clusters", "res.machines": "Machines", "res.platform": "Platform",
    "res.local": "Local (processes on this machine)", "res.namespace": "Namespace for services", "res.kubeconfig": "Kubeconfig path",
    "res.kubeconfigHint": "A file the control plane can read; empty: the pod's service account (in-cluster).",
    "res.autoscaler": "Autoscaling renders as", "res.istio": "Istio installed (canary weights as routes)", "res.yes": "Yes", "res.no": "No",
    "res.groups": "Resource groups", "res.nodes": "Nodes", "res.services": "Services",
    "res.createCluster": "Create cluster", "res.createGroup": "Create resource group",
    "res.clusterCreated": "Cluster {name} created.", "res.groupCreated": "Resource group {name} created.",
    "res.deleteCluster": "Delete cluster {name}", "res.deleteClusterMsg": "A cluster can be deleted only when it has no resource groups.",
    "res.clusterDeleted": "Cluster deleted.", "res.deleteGroup": "Delete resource group {name}",
    "res.deleteGroupMsg": "A resource group can be deleted only when it has no machines and no services.",
    "res.groupDeleted": "Resource group deleted.", "res.nameHint": "Lowercase letters, digits and '-', starting with a letter.",
    "res.noGroups": "No resource group yet: create one, then add machines to it.",
    "res.noNodes": "No machine in this group yet: add one.", "res.noMachines": "No machine registered.",
    "res.address": "Address", "res.cpus": "CPUs", "res.memory": "Memory", "res.gpus": "GPUs",
    "res.instances": "Instances", "res.load": "Load", "res.cpu": "CPU", "res.gpuMemory": "GPU memory",
    "res.cores": "{n} cores", "res.noReadings": "No readings", "res.group": "Cluster / group", "res.free": "Free",
    "res.addNode": "Add machine", "res.addNodeTitle": "Add a machine to {group}", "res.existing": "Registered machine",
    "res.registerTab": "Register a new machine", "res.pick": "Machine", "res.noFree": "Every registered machine is in a group: register a new one.",
    "res.add": "Add", "res.nodeAdded": "Machine {name} added.", "res.removeNode": "Remove", "res.removeNodeTitle": "Remove {name} from {group}",
    "res.removeNodeMsg": "The machine is unbound and what the platform installed on it is cleaned; the machine itself is not destroyed. Services running on it must be scaled down first.",
    "res.nodeRemoved": "Machine removed from the group.", "res.register": "Register machine",
    "res.registered": "Machine {name} registered.", "res.deleteNode": "Unregister {name}",
    "res.deleteNodeMsg": "The machine is forgotten by the platform; remove it from its group first.", "res.nodeDeleted": "Machine unregistered.",
    "res.nodeName": "Name", "res.addressHint": "Host name or IP the platform reaches it at.",
    "res.memoryGiB": "Memory (GiB)", "res.gpuLines": "GPUs, one per line: model, memory in GiB",
    "res.gpuHint": "e.g. NVIDIA A100-SXM4-80GB, 80", "res.gpuLine": "line {n}", "res.labels": "Labels, one per line: key=value",
    "res.cluster": "Cluster",
  },
  zh: {
    "res.title": "资源管理", "res.clusters": "应用集群", "res.machines": "机器", "res.platform": "平台",
    "res.local": "本机（本机进程）", "res.namespace": "服务所在命名空间", "res.kubeconfig": "Kubeconfig 路径",
    "res.kubeconfigHint": "控制面可读的文件；留空：使用 Pod 的服务账号（集群内）。",
    "res.autoscaler": "弹性伸缩渲染为", "res.istio": "已安装 Istio（灰度权重走路由）", "res.yes": "是", "res.no": "否",
    "res.groups": "资源组", "res.nodes": "节点", "res.services": "服务",
    "res.createCluster": "创建集群", "res.createGroup": "创建资源组",
    "res.clusterCreated": "集群 {name} 已创建。", "res.groupCreated": "资源组 {name} 已创建。",
    "res.deleteCluster": "删除集群 {name}", "res.deleteClusterMsg": "集群中没有资源组时才能删除。",
    "res.clusterDeleted": "集群已删除。", "res.deleteGroup": "删除资源组 {name}",
    "res.deleteGroupMsg": "资源组中没有机器、也没有服务时才能删除。",
    "res.groupDeleted": "资源组已删除。", "res.nameHint": "小写字母、数字和“-”，以字母开头。",
    "res.noGroups": "还没有资源组：先创建一个，再向其中添加机器。",
    "res.noNodes": "该资源组还没有机器：请添加。", "res.noMachines": "尚未注册机器。",
    "res.address": "地址", "res.cpus": "CPU", "res.memory": "内存", "res.gpus": "GPU",
    "res.instances": "实例", "res.load": "负载", "res.cpu": "CPU", "res.gpuMemory": "显存",
    "res.cores": "{n} 核", "res.noReadings": "暂无数据", "res.group": "集群 / 资源组", "res.free": "空闲",
    "res.addNode": "添加机器", "res.addNodeTitle": "向 {group} 添加机器", "res.existing": "已注册的机器",
    "res.registerTab": "注册新机器", "res.pick": "机器", "res.noFree": "所有已注册机器都已在资源组中：请注册新机器。",
    "res.add": "添加", "res.nodeAdded": "机器 {name} 已添加。", "res.removeNode": "移出", "res.removeNodeTitle": "将 {name} 移出 {group}",
    "res.removeNodeMsg": "机器将被解绑，平台在其上安装的内容会被清理；机器本身不会被销毁。运行在其上的服务需先缩容。",
    "res.nodeRemoved": "机器已移出资源组。", "res.register": "注册机器",
    "res.registered": "机器 {name} 已注册。", "res.deleteNode": "注销 {name}",
    "res.deleteNodeMsg": "平台将不再记录该机器；请先将其移出资源组。", "res.nodeDeleted": "机器已注销。",
    "res.nodeName": "名称", "res.addressHint": "平台访问它所用的主机名或 IP。",
    "res.memoryGiB": "内存（GiB）", "res.gpuLines": "GPU，每行一块：型号, 显存 GiB",
    "res.gpuHint": "例如 NVIDIA A100-SXM4-80GB, 80", "res.gpuLine": "第 {n} 行", "res.labels": "标签，每行一个：key=value",
    "res.cluster": "集群",
  },
});

export function ResourcesPage({ route }) {
  const [, cluster, group] = route;
  if (group) return html`<${GroupDetail} cluster=${cluster} group=${group} />`;
  if (cluster) return html`<${ClusterDetail} name=${cluster} />`;
  return html`<${Overview} />`;
}

const path = (...parts) => "/api/v1/" + parts.map(encodeURIComponent).join("/");
const link = (...parts) => "#/" + parts.map(encodeURIComponent).join("/");
const gib = 2 ** 30;

// A destructive call through Confirm: the API's refusal (409 and its reason) becomes a toast.
const removal = (apiPath, ok, after) => async () => {
  const done = await attempt(async () => { await api(apiPath, { method: "DELETE" }); return true; }, ok);
  if (done) after();
};

function Crumbs({ parts }) {
  return html`<p class="crumbs">${parts.map(([label, href], i) => html`${i > 0 && " / "}${href ? html`<a href=${href}>${label}</a>` : html`<span>${label}</span>`}`)}</p>`;
}

function Meter({ label, used, total, format }) {
  if (used == null || !total) return null;
  const share = Math.min(used / total, 1);
  return html`<div class="load" title=${pct(share)}>
    <div class="row"><span>${label}</span><span class="muted">${format(used)} / ${format(total)}</span></div>
    <div class="meter"><div style=${{ width: pct(share) }}></div></div>
  </div>`;
}

const cores = (n) => t("res.cores", { n: num(n, 1) });
const whole = (n) => String(Math.round(n));

function ServiceTags({ names }) {
  return html`<div class="tags">${names.map((s) => html`<a class="tag" href=${link("services", s)}>${s}</a>`)}</div>`;
}

// ---- top level: clusters and machines ----

function Overview() {
  const [tab, setTab] = useState("clusters");
  return html`<section>
    <div class="bar"><h2>${t("res.title")}</h2></div>
    <${Tabs} tabs=${[["clusters", t("res.clusters")], ["machines", t("res.machines")]]} current=${tab} onSelect=${setTab} />
    ${tab === "clusters" ? html`<${ClusterList} />` : html`<${MachineList} />`}
  </section>`;
}

function ClusterList() {
  const { data, error, reload } = useApi("/api/v1/clusters");
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState(null);
  const columns = [
    { key: "name", label: t("name"), render: (c) => html`<a href=${link("resources", c.name)}>${c.name}</a>` },
    { key: "platform", label: t("res.platform") },
    { key: "status", label: t("status"), render: (c) => html`<${Status} value=${c.status} />` },
    { key: "groups", label: t("res.groups") },
    { key: "nodes", label: t("res.nodes") },
    { key: "createdAt", label: t("created"), render: (c) => when(c.createdAt) },
    { key: "actions", label: t("actions"), render: (c) => html`<button class="small danger" data-testid="delete-cluster" onClick=${() => setDeleting(c.name)}>${t("delete")}</button>` },
  ];
  return html`
    <div class="bar end">
      <button class="primary" data-testid="create-cluster" onClick=${() => setCreating(true)}>${t("res.createCluster")}</button></div>
    ${error && html`<p class="error">${error.message}</p>`}
    <${Table} testid="clusters" columns=${columns} rows=${data} />
    ${creating && html`<${NameForm} title=${t("res.createCluster")} apiPath="/api/v1/clusters" testid="cluster-form" platforms=${true}
      done=${(c) => t("res.clusterCreated", { name: c.name })} onCreated=${reload} onClose=${() => setCreating(false)} />`}
    ${deleting && html`<${Confirm} title=${t("res.deleteCluster", { name: deleting })} message=${t("res.deleteClusterMsg")} confirmText=${deleting}
      action=${removal(path("clusters", deleting), t("res.clusterDeleted"), reload)} onClose=${() => setDeleting(null)} />`}`;
}

// Create a cluster or a resource group: both are a DNS-label name and a description; a cluster also
// has a platform, and on Kubernetes how to reach it and what it has.
function NameForm({ title, apiPath, testid, done, onCreated, onClose, platforms = false }) {
  const form = useForm({ name: "", description: "", platform: "local", "kubernetes.namespace": "tideserve",
    "kubernetes.kubeconfig": "", "kubernetes.autoscaler": "keda", "kubernetes.istio": "false" });
  const kube = platforms && form.values.platform === "kubernetes";
  const body = (v) => ({
    name: v.name.trim(), description: v.description,
    ...(platforms ? { platform: v.platform } : {}),
    ...(kube ? { kubernetes: {
      namespace: v["kubernetes.namespace"].trim(), autoscaler: v["kubernetes.autoscaler"], istio: v["kubernetes.istio"] === "true",
      ...(v["kubernetes.kubeconfig"].trim() ? { kubeconfig: v["kubernetes.kubeconfig"].trim() } : {}),
    } } : {}),
  });
  const select = (key, options) => html`<select ...${form.bind(key)} onChange=${(e) => form.set(key, e.target.value)}>
    ${options.map(([v, label]) => html`<option value=${v} selected=${form.values[key] === v}>${label}</option>`)}</select>`;
  const save = async (e) => {
    e.preventDefault();
    const made = await form.submit((v) => api(apiPath, { method: "POST", body: body(v) }));
    if (!made) return;
    toast(done(made), "ok");
    onCreated();
    onClose();
  };
  return html`<${Modal} title=${title} onClose=${onClose}>
    <form data-testid=${testid} novalidate onSubmit=${save}>
      <${Field} label=${t("name")} error=${form.error("name")} hint=${t("res.nameHint")}><input ...${form.bind("name")} autocomplete="off" /><//>
      <${Field} label=${t("description")} error=${form.error("description")}><textarea ...${form.bind("description")} rows="3" maxlength="1000"></textarea><//>
      ${platforms && html`<${Field} label=${t("res.platform")} error=${form.error("platform")}>${select("platform", [["local", t("res.local")], ["kubernetes", "Kubernetes"]])}<//>`}
      ${kube && html`
        <${Field} label=${t("res.namespace")} error=${form.error("kubernetes.namespace")}><input ...${form.bind("kubernetes.namespace")} autocomplete="off" /><//>
        <${Field} label=${t("res.kubeconfig")} error=${form.error("kubernetes.kubeconfig")} hint=${t("res.kubeconfigHint")}><input ...${form.bind("kubernetes.kubeconfig")} autocomplete="off" /><//>
        <${Field} label=${t("res.autoscaler")} error=${form.error("kubernetes.autoscaler")}>${select("kubernetes.autoscaler", [["keda", "KEDA"], ["hpa", "HPA v2"]])}<//>
        <${Field} label=${t("res.istio")} error=${form.error("kubernetes.istio")}>${select("kubernetes.istio", [["false", t("res.no")], ["true", t("res.yes")]])}<//>`}
      <div class="actions">
        <button type="button" onClick=${onClose}>${t("cancel")}</button>
        <button class="primary" type="submit" disabled=${form.busy} data-testid="submit">${t("create")}</button>
      </div>
    </form>
  <//>`;
}

function MachineList() {
  const { data, error, reload } = useApi("/api/v1/nodes", { every: 10000 });
  const [registering, setRegistering] = useState(false);
  const [deleting, setDeleting] = useState(null);
  const columns = [
    ...nodeColumns(),
    { key: "group", label: t("res.group"), render: (n) => (n.group ? html`<a href=${link("resources", n.cluster, n.group)}>${n.cluster} / ${n.group}</a>` : html`<span class="muted">${t("res.free")}</span>`) },
    { key: "actions", label: t("actions"), render: (n) => html`<button class="small danger" data-testid="delete-node" onClick=${() => setDeleting(n.name)}>${t("delete")}</button>` },
  ];
  return html`
    <div class="bar end">
      <button class="primary" data-testid="register-node" onClick=${() => setRegistering(true)}>${t("res.register")}</button></div>
    ${error && html`<p class="error">${error.message}</p>`}
    <${Table} testid="machines" columns=${columns} rows=${data} empty=${t("res.noMachines")} />
    ${registering && html`<${Modal} title=${t("res.register")} onClose=${() => setRegistering(false)}>
      <${RegisterNode} onRegistered=${() => { reload(); setRegistering(false); }} onClose=${() => setRegistering(false)} /><//>`}
    ${deleting && html`<${Confirm} title=${t("res.deleteNode", { name: deleting })} message=${t("res.deleteNodeMsg")} confirmText=${deleting}
      action=${removal(path("nodes", deleting), t("res.nodeDeleted"), reload)} onClose=${() => setDeleting(null)} />`}`;
}

// A GPU as the API stores it: {index, name, memory_bytes, uuid}.
const gpuText = (g) => `${g.name} · ${bytes(g.memory_bytes ?? g.memoryBytes)}`;

function nodeColumns() {
  return [
    { key: "name", label: t("name") },
    { key: "address", label: t("res.address") },
    { key: "status", label: t("status"), render: (n) => html`<${Status} value=${n.status} />` },
    { key: "cpus", label: t("res.cpus"), render: (n) => num(n.cpus, 1) },
    { key: "memoryBytes", label: t("res.memory"), render: (n) => bytes(n.memoryBytes) },
    { key: "gpus", label: t("res.gpus"), render: (n) => (n.gpus.length ? html`<div class="lines">${n.gpus.map((g) => html`<div>${gpuText(g)}</div>`)}</div>` : "–") },
  ];
}

// ---- a cluster: its groups ----

function ClusterDetail({ name }) {
  const { data: c, error, reload } = useApi(path("clusters", name), { every: 10000 });
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState(null);
  if (error && !c) return html`<${Crumbs} parts=${[[t("res.title"), "#/resources"]]} /><p class="error">${error.message}</p>`;
  if (!c) return html`<p class="muted">${t("loading")}</p>`;
  const columns = [
    { key: "name", label: t("name"), render: (g) => html`<a href=${link("resources", name, g.name)}>${g.name}</a>` },
    { key: "description", label: t("description") },
    { key: "nodes", label: t("res.nodes"), render: (g) => html`<div class="lines">${g.nodes.map((n) => html`<div class="row">${n.name} <${Status} value=${n.status} /></div>`)}</div>` },
    { key: "services", label: t("res.services"), render: (g) => html`<${ServiceTags} names=${g.services} />` },
    { key: "createdAt", label: t("created"), render: (g) => when(g.createdAt) },
    { key: "actions", label: t("actions"), render: (g) => html`<button class="small danger" data-testid="delete-group" onClick=${() => setDeleting(g.name)}>${t("delete")}</button>` },
  ];
  return html`<section data-testid="cluster-detail">
    <${Crumbs} parts=${[[t("res.title"), "#/resources"], [c.name]]} />
    <div class="bar"><h2>${c.name}</h2><${Status} value=${c.status} /></div>
    <div class="panel"><dl class="kv">
      <dt>${t("res.platform")}</dt><dd>${c.platform}</dd>
      <dt>${t("description")}</dt><dd>${c.description || "–"}</dd>
      <dt>${t("res.groups")}</dt><dd>${c.groups}</dd>
      <dt>${t("res.nodes")}</dt><dd>${c.nodes}</dd>
      <dt>${t("created")}</dt><dd>${when(c.createdAt)}</dd>
    </dl></div>
    <${ClusterLoad} name=${name} />
    <div class="bar"><h3>${t("res.groups")}</h3>
      <button class="primary" data-testid="create-group" onClick=${() => setCreating(true)}>${t("res.createGroup")}</button></div>
    <${Table} testid="groups" columns=${columns} rows=${c.resourceGroups} empty=${t("res.noGroups")} />
    ${creating && html`<${NameForm} title=${t("res.createGroup")} apiPath=${path("clusters", name, "groups")} testid="group-form"
      done=${(g) => t("res.groupCreated", { name: g.name })} onCreated=${reload} onClose=${() => setCreating(false)} />`}
    ${deleting && html`<${Confirm} title=${t("res.deleteGroup", { name: deleting })} message=${t("res.deleteGroupMsg")} confirmText=${deleting}
      action=${removal(path("clusters", name, "groups", deleting), t("res.groupDeleted"), reload)} onClose=${() => setDeleting(null)} />`}
  </section>`;
}

// The cluster's water level (used of capacity) from its monitoring view; absent when there is no reading.
function ClusterLoad({ name }) {
  const { data } = useApi(path("clusters", name, "metrics") + "?window=1m", { every: 10000 });
  const f = data?.current;
  if (!f) return null;
  return html`<div class="stats" data-testid="cluster-load">
    <div class="stat"><${Meter} label=${t("res.cpu")} used=${f.cpu_used_cores} total=${f.cpu_cores} format=${cores} /></div>
    <div class="stat"><${Meter} label=${t("res.memory")} used=${f.memory_used_bytes} total=${f.memory_bytes} format=${bytes} /></div>
    ${f.gpus > 0 && html`<div class="stat"><${Meter} label=${t("res.gpus")} used=${f.gpus_allocated} total=${f.gpus} format=${whole} /></div>
      <div class="stat"><${Meter} label=${t("res.gpuMemory")} used=${f.gpu_memory_used_bytes} total=${f.gpu_memory_bytes} format=${bytes} /></div>`}
    <div class="stat"><div class="v">${whole(f.instances)}</div><div class="k">${t("res.instances")}</div></div>
  </div>`;
}

// ---- a resource group: its machines ----

function GroupDetail({ cluster, group }) {
  const { data: g, error, reload } = useApi(path("clusters", cluster, "groups", group), { every: 10000 });
  const [adding, setAdding] = useState(false);
  const [removing, setRemoving] = useState(null);
  const [deleting, setDeleting] = useState(false);
  const crumbs = [[t("res.title"), "#/resources"], [cluster, link("resources", cluster)]];
  if (error && !g) return html`<${Crumbs} parts=${crumbs} /><p class="error">${error.message}</p>`;
  if (!g) return html`<p class="muted">${t("loading")}</p>`;
  const columns = [
    ...nodeColumns(),
    { key: "instances", label: t("res.instances"), render: (n) => (n.instances.length
      ? html`<div class="lines">${n.instances.map((i) => html`<div class="row"><a href=${link("services", i.service)}>${i.service}</a> <${Status} value=${i.state} /></div>`)}</div>` : "–") },
    { key: "load", label: t("res.load"), render: (n) => html`<${NodeLoad} name=${n.name} />` },
    { key: "actions", label: t("actions"), render: (n) => html`<button class="small danger" data-testid="remove-node" onClick=${() => setRemoving(n.name)}>${t("res.removeNode")}</button>` },
  ];
  return html`<section data-testid="group-detail">
    <${Crumbs} parts=${[...crumbs, [group]]} />
    <div class="bar"><h2>${group}</h2>
      <button class="danger" data-testid="delete-group" onClick=${() => setDeleting(true)}>${t("delete")}</button>
      <button class="primary" data-testid="add-node" onClick=${() => setAdding(true)}>${t("res.addNode")}</button></div>
    <div class="panel"><dl class="kv">
      <dt>${t("res.cluster")}</dt><dd><a href=${link("resources", cluster)}>${cluster}</a></dd>
      <dt>${t("description")}</dt><dd>${g.description || "–"}</dd>
      <dt>${t("res.nodes")}</dt><dd>${g.nodes.length}</dd>
      <dt>${t("res.services")}</dt><dd>${g.services.length ? html`<${ServiceTags} names=${g.services} />` : "–"}</dd>
      <dt>${t("created")}</dt><dd>${when(g.createdAt)}</dd>
    </dl></div>
    <h3>${t("res.nodes")}</h3>
    <${Table} testid="group-nodes" columns=${columns} rows=${g.nodes} empty=${t("res.noNodes")} />
    ${adding && html`<${AddNode} cluster=${cluster} group=${group} onAdded=${reload} onClose=${() => setAdding(false)} />`}
    ${removing && html`<${Confirm} title=${t("res.removeNodeTitle", { name: removing, group })} message=${t("res.removeNodeMsg")} confirmText=${removing}
      action=${removal(path("clusters", cluster, "groups", group, "nodes", removing), t("res.nodeRemoved"), reload)} onClose=${() => setRemoving(null)} />`}
    ${deleting && html`<${Confirm} title=${t("res.deleteGroup", { name: group })} message=${t("res.deleteGroupMsg")} confirmText=${group}
      action=${removal(path("clusters", cluster, "groups", group), t("res.groupDeleted"), () => go("resources", cluster))} onClose=${() => setDeleting(false)} />`}
  </section>`;
}

// A node's load now: the newest readings of its monitoring view (a one-minute window keeps it small).
function NodeLoad({ name }) {
  const { data, error } = useApi(path("nodes", name, "metrics") + "?window=1m", { every: 10000 });
  if (error) return html`<span class="muted" title=${error.message}>–</span>`;
  const f = data?.current;
  // A machine without an agent (registered, not Ready) has capacity figures but no usage.
  if (f?.cpu_used_cores == null && f?.memory_used_bytes == null) return html`<span class="muted">${data ? t("res.noReadings") : "…"}</span>`;
  const gpus = Object.values(data.gpus || {});
  const sum = (key) => gpus.reduce((a, g) => a + (g[key] || 0), 0);
  return html`<div class="loads" data-testid="node-load">
    <${Meter} label=${t("res.cpu")} used=${f.cpu_used_cores} total=${f.cpu_cores} format=${(n) => num(n, 1)} />
    <${Meter} label=${t("res.memory")} used=${f.memory_used_bytes} total=${f.memory_bytes} format=${bytes} />
    ${gpus.length > 0 && html`<${Meter} label=${t("res.gpuMemory")} used=${sum("memory_used_bytes")} total=${sum("memory_bytes")} format=${bytes} />`}
  </div>`;
}

function AddNode({ cluster, group, onAdded, onClose }) {
  const { data: nodes } = useApi("/api/v1/nodes");
  const free = (nodes || []).filter((n) => !n.group);
  const [tab, setTab] = useState("existing");
  const [picked, setPicked] = useState("");
  const [busy, setBusy] = useState(false);
  const add = async (node) => {
    setBusy(true);
    const done = await attempt(() => api(path("clusters", cluster, "groups", group, "nodes"), { method: "POST", body: { node } }), t("res.nodeAdded", { name: node }));
    setBusy(false);
    if (!done) return;
    onAdded();
    onClose();
  };
  const choice = picked || free[0]?.name || "";
  return html`<${Modal} title=${t("res.addNodeTitle", { group: `${cluster} / ${group}` })} onClose=${onClose}>
    <${Tabs} tabs=${[["existing", t("res.existing")], ["register", t("res.registerTab")]]} current=${tab} onSelect=${setTab} />
    ${tab === "existing" ? html`<form data-testid="add-node-form" onSubmit=${(e) => { e.preventDefault(); add(choice); }}>
        ${nodes && !free.length ? html`<p class="muted">${t("res.noFree")}</p>` : html`<${Field} label=${t("res.pick")}>
          <select data-testid="node-select" value=${choice} onChange=${(e) => setPicked(e.target.value)}>
            ${free.map((n) => html`<option value=${n.name}>${n.name} (${n.address}, ${num(n.cpus, 1)} CPU, ${bytes(n.memoryBytes)}${n.gpus.length ? `, ${n.gpus.length} GPU` : ""})</option>`)}
          </select><//>`}
        <div class="actions">
          <button type="button" onClick=${onClose}>${t("cancel")}</button>
          <button class="primary" type="submit" disabled=${busy || !choice} data-testid="submit-add-node">${t("res.add")}</button>
        </div>
      </form>`
      : html`<${RegisterNode} onRegistered=${(n) => add(n.name)} onClose=${onClose} />`}
  <//>`;
}

// "NVIDIA A100-SXM4-80GB, 80" per line → the API's GPU list; "key=value" per line → labels.
const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);
function gpuList(text) {
  return lines(text).map((line, index) => {
    const cut = line.lastIndexOf(",");
    const name = cut < 0 ? line : line.slice(0, cut).trim();
    const memory = cut < 0 ? NaN : parseFloat(line.slice(cut + 1));
    // An unreadable size goes as null, so the API's 422 names the line ("gpus.N.memoryBytes").
    return { index, name, memoryBytes: Number.isFinite(memory) ? Math.round(memory * gib) : null };
  });
}
const labelMap = (text) => Object.fromEntries(lines(text).map((l) => [l.split("=")[0].trim(), l.split("=").slice(1).join("=").trim()]));

// "1.memoryBytes" → "line 2": the API counts GPUs from 0, the user counts lines from 1.
const gpuLine = (rest) => t("res.gpuLine", { n: Number(rest.split(".")[0]) + 1 });

function RegisterNode({ onRegistered, onClose }) {
  const form = useForm({ name: "", address: "", cpus: "", memoryBytes: "", gpus: "", labels: "" });
  const save = async (e) => {
    e.preventDefault();
    const node = await form.submit((v) => api("/api/v1/nodes", {
      method: "POST",
      body: {
        name: v.name.trim(), address: v.address.trim(), cpus: v.cpus === "" ? null : Number(v.cpus),
        memoryBytes: v.memoryBytes === "" ? null : Math.round(Number(v.memoryBytes) * gib),
        gpus: gpuList(v.gpus), labels: labelMap(v.labels),
      },
    }));
    if (!node) return;
    toast(t("res.registered", { name: node.name }), "ok");
    onRegistered(node);
  };
  return html`<form data-testid="node-form" novalidate onSubmit=${save}>
    <div class="form">
      <${Field} label=${t("res.nodeName")} error=${form.error("name")}><input ...${form.bind("name")} autocomplete="off" /><//>
      <${Field} label=${t("res.address")} error=${form.error("address")} hint=${t("res.addressHint")}><input ...${form.bind("address")} autocomplete="off" /><//>
      <${Field} label=${t("res.cpus")} error=${form.error("cpus")}><input ...${form.bind("cpus")} type="number" min="0" step="any" /><//>
      <${Field} label=${t("res.memoryGiB")} error=${form.error("memoryBytes")}><input ...${form.bind("memoryBytes")} type="number" min="0" step="any" /><//>
    </div>
    <${Field} label=${t("res.gpuLines")} error=${form.error("gpus", gpuLine)} hint=${t("res.gpuHint")}><textarea ...${form.bind("gpus")} rows="3"></textarea><//>
    <${Field} label=${t("res.labels")} error=${form.error("labels")}><textarea ...${form.bind("labels")} rows="2"></textarea><//>
    <div class="actions">
      <button type="button" onClick=${onClose}>${t("cancel")}</button>
      <button class="primary" type="submit" disabled=${form.busy} data-testid="submit-node">${t("res.register")}</button>
    </div>
  </form>`;
}
