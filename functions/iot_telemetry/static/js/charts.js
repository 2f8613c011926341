// One chart per metric: the average of each bucket as a line over a band from its min to max,
// the thresholds of the alert rules on that metric as horizontal lines (clear thresholds
// dashed), and the periods the device's alerts on it were open shaded behind.
// Drawn with uPlot (static/vendor/uplot, loaded by the page as the global `uPlot`).

import { count, el, full, number, quantity, unitSymbol } from "./format.js";

// raw: each reading its own point (a line breaks where readings are 1/20 of the range apart).
export const STEP_SECONDS = { "1m": 60, "1h": 3600, "1d": 86400, raw: 1 };
const STEP_NAMES = { "1m": "1 minute", "1h": "1 hour", "1d": "1 day", raw: "raw readings" };
const HEIGHT = 220;
const LINE = "#1d4ed8";
const EDGE = "rgba(29, 78, 216, 0.55)";
const BAND = "rgba(29, 78, 216, 0.22)";
const _ = null;
const RULE_COLOURS = { critical: "#a40e26", warning: "#b07800" };
const OPEN_SHADE = { critical: "rgba(164, 14, 38, 0.13)", warning: "rgba(212, 167, 44, 0.2)" };
const CLEARS = { ">": "≤", ">=": "≤", "<": "≥", "<=": "≥" };
// uPlot's time-axis labels, in 24-hour time: [tick spacing (s), label, then the label where
// the year, month, day, hour, minute or second changes, mode]
const TIME_TICKS = [
  [3600 * 24 * 365, "{YYYY}", _, _, _, _, _, _, 1],
  [3600 * 24 * 28, "{MMM}", "\n{YYYY}", _, _, _, _, _, 1],
  [3600 * 24, "{D} {MMM}", "\n{YYYY}", _, _, _, _, _, 1],
  [3600, "{HH}:{mm}", "\n{D} {MMM} {YYYY}", _, "\n{D} {MMM}", _, _, _, 1],
  [60, "{HH}:{mm}", "\n{D} {MMM} {YYYY}", _, "\n{D} {MMM}", _, _, _, 1],
  [1, ":{ss}", "\n{D} {MMM} {YYYY} {HH}:{mm}", _, "\n{D} {MMM} {HH}:{mm}", _, "\n{HH}:{mm}", _, 1],
];

/** uPlot columns [time, max, min, avg]. A null row breaks the line where readings are missing
 * for longer than 3 buckets and 1/20 of the range: a device that reports every few minutes
 * still draws a line, one that was offline for a while shows the hole. */
export function columns(buckets, step, span) {
  const width = Math.max(3 * STEP_SECONDS[step], span / 20);
  const xs = [];
  const max = [];
  const min = [];
  const avg = [];
  let previous = null;
  for (const bucket of buckets) {
    const t = Date.parse(bucket.t) / 1000;
    if (previous !== null && t - previous > width) {
      xs.push(previous + STEP_SECONDS[step]); max.push(null); min.push(null); avg.push(null);
    }
    xs.push(t); max.push(bucket.max); min.push(bucket.min); avg.push(bucket.avg);
    previous = t;
  }
  return [xs, max, min, avg];
}

function summary(buckets) {
  let count = 0;
  let sum = 0;
  let low = Infinity;
  let high = -Infinity;
  for (const b of buckets) {
    count += b.count;
    sum += b.avg * b.count;
    low = Math.min(low, b.min);
    high = Math.max(high, b.max);
  }
  return count ? { count, avg: sum / count, min: low, max: high } : null;
}

/** [from, to] in seconds of each alert on `metric` open at some time in [start, end]; an
 * alert still open (or acknowledged) lasts until `end`. */
export function openPeriods(alerts, metric, start, end) {
  const periods = [];
  for (const alert of alerts) {
    if (alert.metric !== metric) continue;
    const from = Date.parse(alert.raised_at) / 1000;
    const to = alert.resolved_at ? Date.parse(alert.resolved_at) / 1000 : end;
    if (to < start || from > end) continue;
    periods.push({ from: Math.max(from, start), to: Math.min(to, end), severity: alert.severity,
      rule: alert.rule, open: !alert.resolved_at });
  }
  return periods;
}

export class MetricChart {
  constructor(metric, { onDownload, unit = "" } = {}) {
    this.metric = metric;
    this.unit = unit; // from the device registry, "" when unknown
    this.plot = null;
    this.series = null;
    this.rules = [];
    this.periods = [];
    this.zoomed = false;
    this.range = [0, 1];
    this.meta = el("p", { class: "chart-meta muted" });
    this.area = el("div", { class: "chart-area", role: "img" });
    this.empty = el("p", { class: "chart-empty", hidden: true });
    this.table = el("div", { class: "table-wrap" });
    this.details = el("details", { class: "chart-data" },
      el("summary", { text: `${metric} as a table` }), this.table);
    this.details.addEventListener("toggle", () => this.renderTable());
    this.key = el("ul", { class: "chart-key" });
    this.download = el("button", {
      type: "button", class: "download", "data-key": `download:${metric}`,
      "aria-label": `Download ${metric} as CSV`,
      title: "The buckets of the range and step shown, as a CSV file",
      onclick: () => onDownload && onDownload(this),
    }, "Download CSV");
    this.figure = el("figure", { class: "chart", "data-metric": metric },
      el("figcaption", {}, el("div", { class: "chart-title" },
        el("h3", { text: unit ? `${metric} (${unitSymbol(unit)})` : metric }), this.download),
        this.meta), this.area, this.key, this.empty, this.details);
    this.resizer = new ResizeObserver(() => this.fit());
    this.resizer.observe(this.figure);
  }

  width() {
    return Math.max(280, this.figure.clientWidth - 24);
  }

  fit() {
    if (this.plot && Math.abs(this.plot.width - this.width()) > 1) {
      this.plot.setSize({ width: this.width(), height: HEIGHT });
    }
  }

  create(data) {
    const format = (u, v) => (v === null || v === undefined ? "–" : number(v));
    const options = {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: true }, y: { range: (u, low, high) => this.yRange(low, high) } },
      series: [
        { label: "Time", value: (u, v) => (v === null || v === undefined ? "–" : full(new Date(v * 1000))) },
        { label: "Max", stroke: EDGE, width: 1, dash: [4, 3], value: format, points: { show: false } },
        { label: "Min", stroke: EDGE, width: 1, dash: [4, 3], value: format, points: { show: false } },
        { label: "Average", stroke: LINE, width: 2, value: format },
      ],
      bands: [{ series: [1, 2], fill: BAND }],
      axes: [{ values: TIME_TICKS }, { size: 60 }],
      cursor: { drag: { x: true, y: false } },
      hooks: {
        drawClear: [(u) => this.drawPeriods(u)],
        draw: [(u) => this.drawThresholds(u)],
        // uPlot commits scale changes in a microtask: a time scale other than the requested
        // range once committed means the user zoomed in (drag) or out (double-click autoscale).
        setScale: [(u, key) => {
          if (key === "x") {
            this.zoomed = Math.abs(u.scales.x.min - this.range[0]) > 1
              || Math.abs(u.scales.x.max - this.range[1]) > 1;
          }
        }],
      },
    };
    this.plot = new globalThis.uPlot(options, data, this.area);
    // Registered after uPlot's own double-click (which autoscales): back to the whole range.
    this.plot.over.addEventListener("dblclick", () => {
      this.zoomed = false;
      this.showRange();
    });
  }

  /** The value axis spans the readings and every threshold drawn, so the lines are seen. */
  yRange(low, high) {
    const values = [low, high, ...this.levels()].filter((v) => Number.isFinite(v));
    if (!values.length) return [0, 1];
    const a = Math.min(...values);
    const b = Math.max(...values);
    const pad = (b - a) * 0.08 || Math.abs(a) * 0.1 || 1;
    return [a - pad, b + pad];
  }

  /** Every threshold and clear threshold of the rules, once each. */
  levels() {
    return [...new Set(this.rules.flatMap((r) => [r.threshold, r.clear_threshold]))];
  }

  drawPeriods(u) {
    if (!this.periods.length) return;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    for (const p of this.periods) {
      const x0 = u.valToPos(p.from, "x", true);
      const x1 = u.valToPos(p.to, "x", true);
      ctx.fillStyle = OPEN_SHADE[p.severity] || OPEN_SHADE.warning;
      ctx.fillRect(Math.min(x0, x1), top, Math.max(2, Math.abs(x1 - x0)), height);
    }
    ctx.restore();
  }

  drawThresholds(u) {
    if (!this.rules.length) return;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const ratio = globalThis.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textAlign = "right";
    for (const rule of this.rules) {
      const colour = RULE_COLOURS[rule.severity] || RULE_COLOURS.warning;
      // Each label on the side of its line away from the other, so the two do not overlap.
      const up = -3 * ratio;
      const down = 12 * ratio;
      const rising = rule.condition === ">" || rule.condition === ">=";
      const lines = [[rule.threshold, [], `${rule.name} ${rule.condition} ${number(rule.threshold)}`,
        rising ? up : down]];
      if (rule.clear_threshold !== rule.threshold) {
        lines.push([rule.clear_threshold, [6 * ratio, 4 * ratio],
          `clears ${CLEARS[rule.condition] || ""} ${number(rule.clear_threshold)}`, rising ? down : up]);
      }
      for (const [value, dash, label, offset] of lines) {
        const y = Math.round(u.valToPos(value, "y", true)) + 0.5;
        ctx.strokeStyle = colour;
        ctx.fillStyle = colour;
        ctx.lineWidth = 1.5 * ratio;
        ctx.setLineDash(dash);
        ctx.beginPath();
        ctx.moveTo(left, y);
        ctx.lineTo(left + width, y);
        ctx.stroke();
        ctx.fillText(label, left + width - 4 * ratio, y + offset);
      }
    }
    ctx.restore();
  }

  /** The rules on this metric and the alerts of the device (GET /rules, GET /alerts). */
  overlay(rules, alerts) {
    this.rules = rules.filter((r) => r.metric === this.metric);
    this.alerts = alerts;
  }

  renderKey() {
    const items = this.rules.map((r) => el("li", { "data-rule": r.name },
      el("span", { class: `swatch line sev-${r.severity}`, "aria-hidden": "true" }),
      `${r.name}: ${r.condition} ${number(r.threshold)} (${r.severity})`,
      r.clear_threshold !== r.threshold
        ? [" · ", el("span", { class: `swatch dashed sev-${r.severity}`, "aria-hidden": "true" }),
          ` clears at ${CLEARS[r.condition] || ""} ${number(r.clear_threshold)}`] : ""));
    if (this.periods.length) {
      const open = this.periods.filter((p) => p.open).length;
      items.push(el("li", { "data-key-periods": String(this.periods.length) },
        el("span", { class: "swatch shade", "aria-hidden": "true" }),
        `shaded: ${this.periods.length} alert period${this.periods.length === 1 ? "" : "s"}`
        + `${open ? ` (${open} still open)` : ""}`));
    }
    this.key.replaceChildren(...items);
    this.key.hidden = !items.length;
    Object.assign(this.figure.dataset, {
      thresholds: JSON.stringify(this.levels().sort((a, b) => a - b)),
      alertPeriods: JSON.stringify(this.periods.map((p) => [p.from, p.to])),
    });
  }

  /** Show the whole requested range, not only the part with readings. */
  showRange() {
    this.plot.setScale("x", { min: this.range[0], max: this.range[1] });
  }

  /** Draw a series answer of the API (GET /devices/{id}/series). */
  update(series) {
    this.series = series;
    const from = Date.parse(series.from) / 1000;
    const to = Date.parse(series.to) / 1000;
    this.range = [from, to];
    this.periods = openPeriods(this.alerts || [], this.metric, from, to);
    const data = columns(series.buckets, series.step, to - from);
    if (this.plot) {
      this.plot.setData(data, !this.zoomed);
    } else {
      this.create(data);
    }
    if (!this.zoomed) this.showRange();
    const drawn = this.plot.data[3].filter((v) => v !== null).length;
    Object.assign(this.figure.dataset, {
      points: String(drawn), step: series.step, from: series.from, to: series.to,
    });
    const stats = summary(series.buckets);
    const step = STEP_NAMES[series.step] || series.step;
    const q = (v) => quantity(v, this.unit);
    const what = series.step === "raw" ? count(drawn, "reading") : `${count(drawn, "bucket")} of ${step}`;
    this.meta.textContent = stats
      ? `${what} · average ${q(stats.avg)} · lowest ${q(stats.min)} · `
        + `highest ${q(stats.max)} · drag to zoom, double-click to reset`
      : `No readings in this range (step ${step}).`;
    this.area.setAttribute("aria-label", stats
      ? `${this.metric} from ${full(new Date(from * 1000))} to ${full(new Date(to * 1000))}: `
        + `${what}, average ${q(stats.avg)}, lowest ${q(stats.min)}, `
        + `highest ${q(stats.max)}`
      : `${this.metric}: no readings in this range`);
    this.empty.hidden = true;
    this.area.hidden = false;
    this.download.disabled = false;
    this.renderKey();
    if (this.details.open) this.renderTable();
  }

  /** Show why there is no chart (for example a range too long for the chosen step). */
  fail(message) {
    this.series = null;
    this.figure.dataset.points = "0";
    this.meta.textContent = "";
    this.empty.textContent = message;
    this.empty.hidden = false;
    this.area.hidden = true;
    this.download.disabled = true;
    this.key.hidden = true;
    this.table.replaceChildren();
  }

  renderTable() {
    if (!this.details.open || !this.series) return;
    const rows = this.series.buckets.map((b) => el("tr", {},
      el("th", { scope: "row" }, el("time", { datetime: b.t, text: full(new Date(b.t)) })),
      el("td", { class: "num", text: String(b.count) }),
      el("td", { class: "num", text: number(b.min) }),
      el("td", { class: "num", text: number(b.avg) }),
      el("td", { class: "num", text: number(b.max) })));
    this.table.replaceChildren(el("table", { class: "data compact" },
      el("caption", { class: "visually-hidden", text: `${this.metric} by bucket` }),
      el("thead", {}, el("tr", {},
        ["Bucket start", "Readings", "Min", "Average", "Max"].map((h, i) => el("th", {
          scope: "col", class: i ? "num" : "", text: h,
        })))),
      el("tbody", {}, rows)));
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.figure.remove();
  }
}
