// The console shell: login with a key, the navigation, the language switch, and the page router.
import { html, render, useState } from "./vendor/preact-htm.module.js";
import { api, register, session, t, useRoute, useSession, Toasts } from "./lib.js";
import { PlazaPage } from "./pages/plaza.js";
import { ResourcesPage } from "./pages/resources.js";
import { ServicesPage } from "./pages/services.js";
import { PlaygroundPage } from "./pages/playground.js";
import { KeysPage } from "./pages/keys.js";
import { MonitoringPage } from "./pages/monitoring.js";

register({
  en: {
    "nav.plaza": "Model plaza", "nav.resources": "Resources", "nav.services": "Inference services",
    "nav.playground": "Playground", "nav.keys": "API keys", "nav.monitoring": "Cluster monitoring",
    "login.title": "Log in to tideserve", "login.key": "API key",
    "login.hint": "The first `tideserve up` wrote an admin key to $TIDESERVE_HOME/admin.key.",
    "login.submit": "Log in", "login.logout": "Log out", "login.empty": "Paste an API key first.",
    "login.forbidden": "This key has no admin scope: the console needs an admin key (`tideserve keys create NAME --scope admin`).",
    "notfound": "No such page.",
  },
  zh: {
    "nav.plaza": "模型广场", "nav.resources": "资源管理", "nav.services": "推理服务",
    "nav.playground": "在线体验", "nav.keys": "API 密钥", "nav.monitoring": "集群监控",
    "login.title": "登录 tideserve", "login.key": "API 密钥",
    "login.hint": "首次运行 `tideserve up` 时，管理员密钥已写入 $TIDESERVE_HOME/admin.key。",
    "login.submit": "登录", "login.logout": "退出登录", "login.empty": "请先粘贴 API 密钥。",
    "login.forbidden": "该密钥没有 admin 权限：控制台需要管理员密钥（`tideserve keys create NAME --scope admin`）。",
    "notfound": "页面不存在。",
  },
});

const PAGES = {
  plaza: PlazaPage,
  resources: ResourcesPage,
  services: ServicesPage,
  playground: PlaygroundPage,
  keys: KeysPage,
  monitoring: MonitoringPage,
};

function Login() {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const submit = async (e) => {
    e.preventDefault();
    const k = key.trim();
    if (!k) return setError(t("login.empty"));
    try {
      await api("/api/v1/clusters", { key: k });
      session.login(k);
    } catch (err) {
      setError(err.status === 403 ? t("login.forbidden") : err.message);
    }
    return undefined;
  };
  return html`<form class="login" onSubmit=${submit}>
    <h1>tideserve</h1>
    <h2>${t("login.title")}</h2>
    <label class="field"><span class="label">${t("login.key")}</span>
      <input type="password" name="key" autocomplete="off" value=${key} onInput=${(e) => setKey(e.target.value)} /></label>
    <p class="hint">${t("login.hint")}</p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <button class="primary" type="submit">${t("login.submit")}</button>
    <${LangSwitch} />
  </form>`;
}

function LangSwitch() {
  const other = session.lang === "zh" ? "en" : "zh";
  return html`<button type="button" class="link lang" data-testid="lang" onClick=${() => session.setLang(other)}>${other === "zh" ? "中文" : "English"}</button>`;
}

function Shell() {
  const route = useRoute();
  const Page = PAGES[route[0]];
  return html`<div class="shell">
    <aside>
      <div class="brand">tideserve</div>
      <nav>${Object.keys(PAGES).map((id) => html`<a href="#/${id}" class=${route[0] === id ? "active" : ""} data-nav=${id}>${t(`nav.${id}`)}</a>`)}</nav>
      <div class="foot"><${LangSwitch} /><button class="link" onClick=${() => session.logout()}>${t("login.logout")}</button></div>
    </aside>
    <main>${Page ? html`<${Page} route=${route} />` : html`<p>${t("notfound")}</p>`}</main>
  </div>`;
}

function App() {
  useSession();
  document.documentElement.lang = session.lang;
  return html`${session.key ? html`<${Shell} />` : html`<${Login} />`}<${Toasts} />`;
}

render(html`<${App} />`, document.getElementById("app"));
