// One chart per metric: the average of each bucket as a line over a band from its min to max
// (drawn per bucket, so a lone bucket shows its spread too), the thresholds of the alert rules
// on that metric as horizontal lines (clear thresholds dashed) with labels placed inside the
// plot and off the data, and the periods the device's alerts on it were open shaded behind.
// Drawn with uPlot (static/vendor/uplot, loaded by the page as the global `uPlot`).

import { clock, count, el, full, number, quantity, unitSymbol } from "./format.js";

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
const LABEL_FONT = 11; // CSS px
const LABEL_GAP = 3; // CSS px between a threshold line and its label
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
    this.step = "1m";
    this.labelBoxes = []; // where the threshold labels were drawn (CSS px in the canvas)
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
    this.figure.chart = this; // for the browser tests, which check what was drawn where
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
      axes: [{ values: TIME_TICKS }, { size: 60 }],
      cursor: { drag: { x: true, y: false } },
      hooks: {
        drawClear: [(u) => this.drawPeriods(u), (u) => this.drawBand(u)],
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

  /** Each bucket's min-max as a bar centred on its time, filled as one shape: buckets closer
   * than a bar's width merge into a band, and a lone bucket shows its spread (uPlot's own
   * band needs two points). */
  drawBand(u) {
    const [xs, max, min] = u.data;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const ratio = globalThis.devicePixelRatio || 1;
    const stepPx = Math.abs(u.valToPos(STEP_SECONDS[this.step] || 60, "x", true)
      - u.valToPos(0, "x", true));
    const bar = Math.min(Math.max(stepPx * 0.6, 4 * ratio), 16 * ratio);
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.beginPath();
    for (let i = 0; i < xs.length; i++) {
      if (max[i] === null || min[i] === null) continue;
      const x = u.valToPos(xs[i], "x", true);
      const high = u.valToPos(max[i], "y", true);
      const low = u.valToPos(min[i], "y", true);
      const h = Math.max(low - high, 2 * ratio);
      ctx.rect(x - bar / 2, (high + low) / 2 - h / 2, bar, h);
    }
    ctx.fillStyle = BAND;
    ctx.fill();
    ctx.restore();
  }

  /** The data as boxes in canvas pixels: a bar per bucket (min to max) and the segments of
   * the lines between buckets, for placing labels off them. */
  dataBoxes(u) {
    const [xs, max, min, avg] = u.data;
    const boxes = [];
    const ratio = globalThis.devicePixelRatio || 1;
    const pad = 2 * ratio;
    let previous = null;
    for (let i = 0; i < xs.length; i++) {
      if (max[i] === null || min[i] === null) {
        previous = null;
        continue;
      }
      const x = u.valToPos(xs[i], "x", true);
      const ys = [max[i], min[i], avg[i]].filter((v) => v !== null).map((v) => u.valToPos(v, "y", true));
      const box = { x0: x - 8 * ratio, x1: x + 8 * ratio, y0: Math.min(...ys) - pad, y1: Math.max(...ys) + pad };
      boxes.push(box);
      if (previous) {
        boxes.push({ x0: previous.x0, x1: box.x1, y0: Math.min(previous.y0, box.y0), y1: Math.max(previous.y1, box.y1), segment: true });
      }
      previous = box;
    }
    return boxes;
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
    ctx.font = `${LABEL_FONT * ratio}px system-ui, sans-serif`;
    const lines = [];
    for (const rule of this.rules) {
      const colour = RULE_COLOURS[rule.severity] || RULE_COLOURS.warning;
      // Each label on the side of its line away from the other line of the rule, if it fits.
      const rising = rule.condition === ">" || rule.condition === ">=";
      lines.push({ value: rule.threshold, dash: [], colour, above: rising,
        text: `${rule.name} ${rule.condition} ${number(rule.threshold)}` });
      if (rule.clear_threshold !== rule.threshold) {
        lines.push({ value: rule.clear_threshold, dash: [6 * ratio, 4 * ratio], colour, above: !rising,
          text: `clears ${CLEARS[rule.condition] || ""} ${number(rule.clear_threshold)}` });
      }
    }
    for (const line of lines) {
      line.y = Math.round(u.valToPos(line.value, "y", true)) + 0.5;
      ctx.strokeStyle = line.colour;
      ctx.lineWidth = 1.5 * ratio;
      ctx.setLineDash(line.dash);
      ctx.beginPath();
      ctx.moveTo(left, line.y);
      ctx.lineTo(left + width, line.y);
      ctx.stroke();
    }
    // Labels inside the plot, off the data and off each other: the first place that is
    // free of both among the right and left ends, each side of the line; else the one that
    // covers the least, never outside the plot (where it would be cut off).
    const data = this.dataBoxes(u);
    const placed = [];
    const gap = LABEL_GAP * ratio;
    const textHeight = LABEL_FONT * ratio;
    const overlaps = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
    for (const line of lines) {
      const w = ctx.measureText(line.text).width;
      const candidates = [];
      for (const above of [line.above, !line.above]) {
        for (const right of [true, false]) {
          const x1 = right ? left + width - 4 * ratio : left + 4 * ratio + w;
          let y0 = above ? line.y - gap - textHeight : line.y + gap;
          y0 = Math.min(Math.max(y0, top + 1), top + height - textHeight - 1);
          candidates.push({ x0: x1 - w, x1, y0, y1: y0 + textHeight });
        }
      }
      const cost = (box) => 2 * data.filter((d) => overlaps(box, d)).length
        + placed.filter((p) => overlaps(box, p)).length * 3
        + (Math.abs((box.y0 + box.y1) / 2 - line.y) > textHeight * 1.5 ? 1 : 0);
      let best = candidates[0];
      let bestCost = cost(best);
      for (const box of candidates.slice(1)) {
        const c = cost(box);
        if (c < bestCost) {
          best = box;
          bestCost = c;
        }
      }
      placed.push(best);
      ctx.fillStyle = line.colour;
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillText(line.text, best.x0, best.y0);
    }
    this.labelBoxes = placed.map((b, i) => ({ text: lines[i].text, left: b.x0 / ratio,
      top: b.y0 / ratio, right: b.x1 / ratio, bottom: b.y1 / ratio }));
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
    this.step = series.step;
    const from = Date.parse(series.from) / 1000;
    const to = Date.parse(series.to) / 1000;
    // The plot starts at the first reading (half a bucket before it) rather than showing
    // empty time before a device's first report; the line above the chart says so.
    const first = series.buckets.length ? Date.parse(series.buckets[0].t) / 1000 : null;
    const half = (STEP_SECONDS[series.step] || 60) / 2;
    const start = first !== null && first - half > from ? Math.min(first - half, to - 2 * half) : from;
    this.range = [start, to];
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
      shownFrom: new Date(start * 1000).toISOString(),
    });
    const stats = summary(series.buckets);
    const step = STEP_NAMES[series.step] || series.step;
    const q = (v) => quantity(v, this.unit);
    const what = series.step === "raw" ? count(drawn, "reading") : `${count(drawn, "bucket")} of ${step}`;
    this.meta.textContent = stats
      ? `${what} · average ${q(stats.avg)} · lowest ${q(stats.min)} · `
        + `highest ${q(stats.max)}${start > from ? ` · from its first ${series.step === "raw" ? "reading" : "bucket"} (${clock(new Date(first * 1000))}),`
          + " none earlier in this range" : ""} · drag to zoom, double-click to reset`
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
