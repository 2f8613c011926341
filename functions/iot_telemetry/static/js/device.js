// One device: its facts, latest readings, and a chart per metric over a chosen range.

import * as api from "./api.js";
import { MetricChart } from "./charts.js";
import { status } from "./fleet.js";
import { at, el, full, keepFocus, quantity, say, when } from "./format.js";

const $ = (id) => document.getElementById(id);

export const RANGES = {
  "5m": { label: "Last 5 minutes", ms: 300e3 },
  "15m": { label: "Last 15 minutes", ms: 900e3 },
  "1h": { label: "Last hour", ms: 3600e3 },
  "1d": { label: "Last day", ms: 86400e3 },
  "1w": { label: "Last week", ms: 7 * 86400e3 },
};
const STEP_NAMES = { "1m": "1 minute", "1h": "1 hour", "1d": "1 day" };
const DEFAULT_RANGE = "1h";
/** Ranges up to an hour draw the readings themselves (step=raw) when the API keeps them and
 * they fit one answer; longer ones, or a step chosen by hand, draw buckets. */
const RAW_UP_TO_MS = 3600e3;
const RAW_LIMIT = 10000;

/** A raw answer shaped as buckets of one reading each, so the chart draws it the same way. */
export function readingsAsBuckets(answer) {
  return { ...answer, buckets: answer.readings.map((r) => ({
    t: r.t, count: 1, min: r.value, max: r.value, avg: r.value, sum: r.value,
  })) };
}

/** With no range chosen: the shortest of 5 min, 15 min and an hour that holds every reading
 * of the device, so a device that began reporting a minute ago is not a sliver at the edge. */
export function fittingRange(firstSeen, now = Date.now()) {
  const age = now - Date.parse(firstSeen);
  if (Number.isNaN(age)) return DEFAULT_RANGE;
  return ["5m", "15m"].find((r) => age <= RANGES[r].ms * 0.9) || DEFAULT_RANGE;
}

function unitsOf(device) {
  const units = device && device.metadata && device.metadata.units;
  return units && typeof units === "object" ? units : {};
}

/** "2026-11-26T10:00" (local time, as a datetime-local input holds it) for an ISO time. */
function localInput(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:`
    + `${pad(d.getMinutes())}`;
}

export class DeviceView {
  constructor(app) {
    this.app = app;
    this.section = $("view-device");
    this.id = null;
    this.params = {};
    this.device = null;
    this.charts = new Map();
    this.seq = 0;
    this.overlays = { rules: [], alerts: [] };
    this.form = $("range-form");
    this.form.addEventListener("change", (event) => {
      if (event.target.name !== "range") return;
      if (event.target.value === "custom") {
        this.showCustom(true);
        $("range-from").focus();
      } else {
        this.app.go(this.link({ range: event.target.value }));
      }
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const from = new Date($("range-from").value);
      const to = new Date($("range-to").value);
      if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime()) || from >= to) {
        $("range-note").textContent = "Choose a start before the end.";
        $("range-from").focus();
        return;
      }
      this.app.go(this.link({
        range: "custom", from: from.toISOString(), to: to.toISOString(), step: $("range-step").value,
      }));
    });
  }

  link(params) {
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
    const text = query.toString();
    return `#/devices/${encodeURIComponent(this.id)}${text ? `?${text}` : ""}`;
  }

  title() {
    return this.id || "Device";
  }

  enter({ id, query }) {
    if (id !== this.id) {
      for (const chart of this.charts.values()) chart.destroy();
      this.charts.clear();
      this.device = null;
      $("device-facts").replaceChildren();
      $("device-latest").tBodies[0].replaceChildren();
      $("device-status").replaceChildren();
    }
    this.id = id;
    const range = query.get("range") || "";
    // No range in the link: chosen from the device's data once it is known (refresh).
    this.fitting = !(range === "custom" || RANGES[range]);
    this.params = {
      range: this.fitting ? DEFAULT_RANGE : range,
      from: query.get("from") || "",
      to: query.get("to") || "",
      step: query.get("step") || "",
    };
    $("device-title").textContent = id;
    $("device-crumb").textContent = id;
    for (const radio of this.form.elements.range) radio.checked = radio.value === this.params.range;
    this.showCustom(this.params.range === "custom");
    if (this.params.range === "custom") {
      if (this.params.from) $("range-from").value = localInput(this.params.from);
      if (this.params.to) $("range-to").value = localInput(this.params.to);
      $("range-step").value = this.params.step;
    }
  }

  showCustom(show) {
    $("custom-range").hidden = !show;
    if (show && !$("range-from").value) {
      const span = RANGES[this.params.range] ? RANGES[this.params.range].ms : RANGES["1h"].ms;
      $("range-from").value = localInput(new Date(Date.now() - span).toISOString());
      $("range-to").value = localInput(new Date().toISOString());
    }
  }

  /** Parameters of the series requests: a preset ends now (the API's clock); custom is fixed. */
  seriesParams() {
    const { range, from, to, step } = this.params;
    if (range === "custom") return { from, to, step };
    return { from: new Date(Date.now() - RANGES[range].ms).toISOString() };
  }

  /** Whether the range is short enough to draw the readings themselves. */
  wantsRaw(params) {
    if (this.params.range !== "custom") return RANGES[this.params.range].ms <= RAW_UP_TO_MS;
    return !params.step && Date.parse(params.to) - Date.parse(params.from) <= RAW_UP_TO_MS;
  }

  /** One metric's chart data: its readings for a short range, else (or when the API keeps
   * none, or not all of them) its buckets. */
  async seriesOf(metric, params) {
    if (this.wantsRaw(params)) {
      try {
        const answer = await api.series(this.id, { metric, ...params, step: "raw", limit: RAW_LIMIT });
        if (!answer.next_cursor && answer.complete) return readingsAsBuckets(answer);
      } catch (err) {
        if (err.status !== 400) throw err; // 400: raw readings are off (RAW_RETENTION_HOURS=0)
      }
    }
    return api.series(this.id, { metric, ...params });
  }

  /** The start of the device's earliest bucket in the last hour, or null (a device
   * registered before its first reading has no first_seen). */
  async earliestReading(metrics) {
    const answers = await Promise.all(metrics.map((metric) => api.series(this.id, {
      metric, from: new Date(Date.now() - RANGES[DEFAULT_RANGE].ms).toISOString(),
    }).catch(() => null)));
    const times = answers.flatMap((a) => (a ? a.buckets.map((b) => Date.parse(b.t)) : []));
    return times.length ? new Date(Math.min(...times)).toISOString() : null;
  }

  staleNote() {
    if (!this.device || !this.device.stale) return "";
    return this.device.last_seen
      ? `${this.device.id} is stale: its last report arrived ${full(new Date(this.device.last_seen))}.`
      : `${this.device.id} has not reported yet.`;
  }

  async refresh() {
    const seq = ++this.seq;
    let device;
    try {
      device = await api.device(this.id);
    } catch (err) {
      if (err.status !== 404 && err.status !== 400) throw err;
      if (seq !== this.seq) return;
      this.device = null;
      say($("device-message"), err.status === 404 ? `No device “${this.id}” has reported.`
        : err.message);
      $("device-body").hidden = true;
      return;
    }
    const metrics = Object.keys(device.metrics || {}).sort();
    if (this.fitting) {
      // once, on the first answer: afterwards the view stays where it is
      this.fitting = false;
      const first = device.first_seen || await this.earliestReading(metrics);
      if (seq !== this.seq) return;
      this.params.range = first ? fittingRange(first) : DEFAULT_RANGE;
      for (const radio of this.form.elements.range) radio.checked = radio.value === this.params.range;
    }
    const params = this.seriesParams();
    const since = Date.parse(params.from) || Date.now() - RANGES["1h"].ms;
    // Thresholds and alert periods are extras: a chart is still drawn without them.
    const [answers, rules, alerts] = await Promise.all([
      Promise.all(metrics.map((metric) => this.seriesOf(metric, params)
        .then((series) => ({ metric, series }), (error) => ({ metric, error })))),
      api.rules(this.id).then((answer) => answer.rules, () => []),
      api.deviceAlerts(this.id, since).catch(() => []),
    ]);
    if (seq !== this.seq) return; // the view moved on while these were in flight
    const lost = answers.find((a) => a.error && a.error.unreachable);
    if (lost) throw lost.error;
    this.overlays = { rules, alerts };
    this.device = device;
    say($("device-message"), "");
    $("device-body").hidden = false;
    keepFocus(this.section, () => this.render(device, metrics));
    this.renderCharts(answers, unitsOf(device));
  }

  /** Save what a chart shows (its range and step) as CSV. */
  async download(chart) {
    const { series } = chart;
    if (!series) return;
    const button = chart.download;
    button.disabled = true;
    try {
      const name = await api.downloadCsv(`devices/${encodeURIComponent(this.id)}/series`, {
        metric: chart.metric, from: series.from, to: series.to, step: series.step,
      }, `${this.id}_${chart.metric}.csv`);
      this.app.announce(`Downloaded ${name}.`);
    } catch (err) {
      say($("device-message"), `Could not download ${chart.metric}: ${err.message}`);
      if (err.needsToken || err.unreachable) this.app.failed(err);
    } finally {
      button.disabled = !chart.series;
    }
  }

  render(device, metrics) {
    $("device-status").replaceChildren(status(device));
    const open = device.open_alerts || 0;
    const fact = (term, ...value) => [el("dt", { text: term }), el("dd", {}, ...value)];
    $("device-facts").replaceChildren(
      ...fact("Last seen", when(device.last_seen)),
      ...fact("First seen", at(device.first_seen)),
      ...fact("Open alerts", open ? `${open} (open or acknowledged) · ` : "none · ", el("a", {
        href: `#/alerts?device=${encodeURIComponent(device.id)}`,
        "data-key": "device-alerts",
      }, "see its alerts")));
    $("device-latest").tBodies[0].replaceChildren(...metrics.map((m) => el("tr", { "data-metric": m },
      el("th", { scope: "row", text: m }),
      el("td", { class: "num", text: quantity(device.metrics[m].value, unitsOf(device)[m]) }),
      el("td", {}, when(device.metrics[m].time)))));
  }

  renderCharts(answers, units = {}) {
    const container = $("charts");
    for (const [metric, chart] of this.charts) {
      if (!answers.some((a) => a.metric === metric)) {
        chart.destroy();
        this.charts.delete(metric);
      }
    }
    let steps = new Set();
    answers.forEach(({ metric }, index) => {
      if (!this.charts.has(metric)) {
        this.charts.set(metric, new MetricChart(metric, {
          onDownload: (chart) => this.download(chart), unit: units[metric] }));
      }
      const figure = this.charts.get(metric).figure;
      // Figures stay in metric order; one already in place is not moved (it may hold focus).
      if (container.children[index] !== figure) container.insertBefore(figure, container.children[index] || null);
    });
    for (const { metric, series, error } of answers) {
      const chart = this.charts.get(metric);
      chart.overlay(this.overlays.rules, this.overlays.alerts);
      if (error) chart.fail(error.message);
      else {
        chart.update(series);
        steps.add(series.step);
      }
    }
    if (!steps.size && this.params.step) steps.add(this.params.step);
    const raw = steps.has("raw");
    steps.delete("raw");
    steps = [...steps].map((s) => STEP_NAMES[s] || s).join(", ");
    const range = this.params.range === "custom" ? "Custom range" : RANGES[this.params.range].label;
    const chosen = this.params.range === "custom" && this.params.step ? "chosen" : "chosen for the range";
    const drawn = [raw ? "every reading as sent" : "", steps ? `one bucket per ${steps} (${chosen}); `
      + "band from lowest to highest, line the average" : ""].filter(Boolean).join("; ");
    $("range-note").textContent = answers.length
      ? `${range}: ${drawn || "–"}; horizontal lines are alert thresholds (dashed: where an `
        + "alert clears), shading is when this device's alerts were open."
      : "This device has no metrics yet.";
    container.dataset.range = this.params.range; // what the charts now show (tests wait on it)
  }
}
