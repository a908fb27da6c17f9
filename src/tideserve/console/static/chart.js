// A time chart of one or more series from a monitoring view: `series` is the view's
// {key: [[t, v], ...]} map, `lines` picks keys and labels, `unit` formats the axis.
import { html, useEffect, useRef } from "./lib.js";

const COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a7ea4"];

// uPlot wants one shared x array; the series of one view share the collector's rounds, so the
// union of their times is small, and a time a series lacks is a gap (null), not a zero.
function align(series, keys) {
  const times = [...new Set(keys.flatMap((k) => (series[k] || []).map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const columns = keys.map((k) => {
    const col = new Array(times.length).fill(null);
    for (const [t, v] of series[k] || []) col[index.get(t)] = v;
    return col;
  });
  return [times, ...columns];
}

export function Chart({ title, series, lines, unit = (v) => v, height = 180 }) {
  const box = useRef(null);
  const plot = useRef(null);
  const keys = lines.map((l) => l[0]);
  const data = align(series || {}, keys);
  const empty = data[0].length === 0;
  useEffect(() => {
    if (empty || !box.current) return undefined;
    const opts = {
      width: box.current.clientWidth || 400,
      height,
      legend: { live: false },
      scales: { x: { time: true } },
      axes: [{}, { values: (_u, ticks) => ticks.map(unit), size: 80 }],
      series: [{}, ...lines.map(([, label], i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false, value: (_u, v) => (v == null ? "–" : unit(v)) }))],
    };
    plot.current = new window.uPlot(opts, data, box.current);
    const resize = () => plot.current?.setSize({ width: box.current.clientWidth, height });
    addEventListener("resize", resize);
    return () => { removeEventListener("resize", resize); plot.current?.destroy(); plot.current = null; };
  }, [empty, keys.join(), height]);
  useEffect(() => { if (plot.current && !empty) plot.current.setData(data); });
  return html`<div class="chart" data-chart=${title} data-points=${data[0].length}>
    <h4>${title}</h4>
    ${empty ? html`<p class="muted">—</p>` : null}
    <div ref=${box}></div>
  </div>`;
}
