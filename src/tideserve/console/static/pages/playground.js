// Chat with any running service through the same OpenAI-compatible endpoint clients use, streamed,
// with the figures a user checks first (time to first token, tokens/s) and the ids to find the
// request and the conversation in the logs.
import { html, useState, useEffect, useRef, useApi, register, session, t, query, num, ms, Status } from "../lib.js";

// getRandomValues, unlike randomUUID, works on plain http too (a console reached by a LAN address).
const newSessionId = () => Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");

// The `data:` payloads of a server-sent-event body, as they arrive.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop(); // an event not finished yet
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error?.message || (typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

// Streams one completion; `update(patch)` is called with the reply so far and its figures.
async function streamChat({ body, sessionId, signal, update }) {
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: `Bearer ${session.key}`, "content-type": "application/json", "X-Session-Id": sessionId },
    body: JSON.stringify(body),
    signal,
  });
  const requestId = response.headers.get("x-request-id");
  update({ requestId });
  if (response.status === 401) session.logout();
  if (!response.ok) throw new Error(await errorOf(response));
  let content = "";
  let first = null;
  let last = null;
  let deltas = 0;
  let usage = null;
  // Tokens/s is decode speed: tokens over the span from the first to the last one, so the
  // prompt's processing (already in TTFT) does not dilute it.
  const figures = () => {
    const tokens = usage?.completion_tokens ?? deltas;
    const span = (last - first) / 1000;
    return { ttft: first == null ? null : (first - started) / 1000, tokensPerS: span > 0 ? tokens / span : null, tokens };
  };
  for await (const data of sseData(response.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message); // a failure after the stream began
    const delta = chunk.choices?.[0]?.delta?.content;
    if (delta) {
      last = performance.now();
      first ??= last;
      deltas += 1;
      content += delta;
    }
    if (chunk.usage) usage = chunk.usage;
    update({ content, ...figures() });
  }
  update({ done: true, ...figures() });
}

// Only exchanges that got an answer (maybe stopped early) are part of the conversation the model sees.
const answered = (messages) => messages.flatMap((m, i) => {
  const reply = m.role === "user" ? messages[i + 1] : m;
  return reply?.error || !reply?.content ? [] : [{ role: m.role, content: m.content }];
});

function ServicePicker({ services, value, onChange }) {
  return html`<select data-testid="service-select" value=${value} onChange=${(e) => onChange(e.target.value)}>
    <option value="" disabled>${t("pg.pickService")}</option>
    ${services.map((s) => html`<option value=${s.name} disabled=${s.status !== "Running"}>${s.name} · ${t(`status.${s.status}`)}</option>`)}
  </select>`;
}

function Figures({ m }) {
  return html`<div class="hint msg-meta">
    ${m.ttft != null && html`<span>TTFT <b data-testid="ttft">${ms(m.ttft)}</b></span>`}
    ${m.done && m.tokens != null && html`<span><b data-testid="tokens-per-s">${m.tokensPerS == null ? "–" : num(m.tokensPerS, 1)}</b> ${t("pg.tokensPerS")}</span>
      <span>${t("pg.tokens", { n: m.tokens })}</span>`}
    ${m.stopped && html`<span>${t("pg.stopped")}</span>`}
    ${m.requestId && html`<span>${t("pg.requestId")} <code data-testid="request-id">${m.requestId}</code></span>`}
  </div>`;
}

function Message({ m }) {
  if (m.role === "user") return html`<div class="msg user" data-testid="user-message">${m.content}</div>`;
  return html`<div class="msg assistant" data-testid="assistant-message">
    ${m.content || (!m.error && !m.done && html`<span class="muted">…</span>`)}
    ${m.error && html`<p class="error" role="alert" data-testid="chat-error">${m.error}</p>`}
    <${Figures} m=${m} />
  </div>`;
}

export function PlaygroundPage({ route }) {
  const services = useApi("/api/v1/services", { every: 10000 });
  const [service, setService] = useState(query().get("service") || route[1] || "");
  const [system, setSystem] = useState("");
  const [maxTokens, setMaxTokens] = useState(256);
  const [temperature, setTemperature] = useState(0.7);
  const [messages, setMessages] = useState([]);
  const [sessionId, setSessionId] = useState(newSessionId);
  const [input, setInput] = useState("");
  const [abort, setAbort] = useState(null); // set while a reply streams
  const chat = useRef(null);

  const list = services.data || [];
  const chosen = list.find((s) => s.name === service);
  // Nothing asked for in the link: the first service that can answer.
  useEffect(() => {
    if (!service && list.length) setService(list.find((s) => s.status === "Running")?.name || "");
  }, [services.data]);
  useEffect(() => { chat.current?.scrollTo(0, chat.current.scrollHeight); }, [messages]);

  const send = async () => {
    const text = input.trim();
    if (!text || !chosen || abort) return;
    const body = {
      model: chosen.access?.modelField || chosen.name,
      messages: [...(system.trim() ? [{ role: "system", content: system }] : []), ...answered(messages), { role: "user", content: text }],
      max_tokens: Number(maxTokens),
      temperature: Number(temperature),
      stream: true,
      stream_options: { include_usage: true },
    };
    const ctl = new AbortController();
    const patchReply = (patch) => setMessages((ms) => [...ms.slice(0, -1), { ...ms.at(-1), ...patch }]);
    setMessages((ms) => [...ms, { role: "user", content: text }, { role: "assistant", content: "" }]);
    setInput("");
    setAbort(ctl);
    try {
      await streamChat({ body, sessionId, signal: ctl.signal, update: patchReply });
    } catch (e) {
      patchReply(e.name === "AbortError" ? { stopped: true, done: true } : { error: e.message, done: true });
    }
    setAbort(null);
  };
  const restart = () => { setMessages([]); setSessionId(newSessionId()); };
  const onKey = (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  };

  return html`<div class="bar"><h2>${t("nav.playground")}</h2>
      <span class="hint">${t("pg.session")} <code data-testid="session-id">${sessionId}</code></span>
      <button onClick=${restart} disabled=${!!abort} data-testid="chat-new">${t("pg.new")}</button>
    </div>
    <div class="playground">
      <div class="panel">
        <label class="field"><span class="label">${t("pg.service")}</span>
          <${ServicePicker} services=${list} value=${service} onChange=${setService} /></label>
        ${chosen && (chosen.status === "Running"
          ? html`<p class="hint"><${Status} value=${chosen.status} /> ${chosen.model}</p>`
          : html`<p class="error">${t("pg.notRunning")} <${Status} value=${chosen.status} /></p>`)}
        ${services.error && html`<p class="error">${services.error.message}</p>`}
        <label class="field"><span class="label">${t("pg.system")}</span>
          <textarea rows="4" value=${system} onInput=${(e) => setSystem(e.target.value)} placeholder=${t("pg.systemHint")} data-testid="system-prompt"></textarea></label>
        <label class="field"><span class="label">max_tokens</span>
          <input type="number" min="1" value=${maxTokens} onInput=${(e) => setMaxTokens(e.target.value)} data-testid="max-tokens" /></label>
        <label class="field"><span class="label">temperature</span>
          <input type="number" min="0" max="2" step="0.1" value=${temperature} onInput=${(e) => setTemperature(e.target.value)} data-testid="temperature" /></label>
      </div>
      <div class="panel chat-pane">
        <div class="chat" ref=${chat}>
          ${messages.length ? messages.map((m, i) => html`<${Message} key=${i} m=${m} />`) : html`<p class="muted">${t("pg.empty")}</p>`}
        </div>
        <div class="row composer">
          <textarea rows="2" value=${input} onInput=${(e) => setInput(e.target.value)} onKeyDown=${onKey}
            placeholder=${t("pg.placeholder")} data-testid="chat-input"></textarea>
          ${abort
            ? html`<button class="danger" onClick=${() => abort.abort()} data-testid="chat-stop">${t("pg.stop")}</button>`
            : html`<button class="primary" onClick=${send} disabled=${!chosen || chosen.status !== "Running" || !input.trim()} data-testid="chat-send">${t("pg.send")}</button>`}
        </div>
      </div>
    </div>`;
}

register({
  en: {
    "pg.service": "Service", "pg.pickService": "Pick a service", "pg.notRunning": "This service cannot answer now:",
    "pg.system": "System prompt", "pg.systemHint": "You are a helpful assistant.",
    "pg.session": "Conversation", "pg.new": "New conversation", "pg.empty": "Send a message to start the conversation.",
    "pg.placeholder": "Message (Enter sends, Shift+Enter for a new line)", "pg.send": "Send", "pg.stop": "Stop",
    "pg.tokensPerS": "tokens/s", "pg.tokens": "{n} tokens", "pg.stopped": "stopped", "pg.requestId": "request id",
  },
  zh: {
    "pg.service": "服务", "pg.pickService": "选择服务", "pg.notRunning": "该服务当前无法响应：",
    "pg.system": "系统提示词", "pg.systemHint": "你是一个乐于助人的助手。",
    "pg.session": "会话", "pg.new": "新会话", "pg.empty": "发送一条消息开始对话。",
    "pg.placeholder": "输入消息（Enter 发送，Shift+Enter 换行）", "pg.send": "发送", "pg.stop": "停止",
    "pg.tokensPerS": "token/秒", "pg.tokens": "{n} 个 token", "pg.stopped": "已停止", "pg.requestId": "请求 ID",
  },
});
