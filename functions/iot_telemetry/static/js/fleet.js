// The fleet: every device with its last report, latest metric values and open alerts.

import * as api from "./api.js";
import { el, full, keepFocus, quantity, say, when } from "./format.js";

const $ = (id) => document.getElementById(id);

function compare(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null) return 1; // missing values sort last either way
  if (b === undefined || b === null) return -1;
  return a < b ? -1 : 1;
}

export class FleetView {
  constructor(app) {
    this.app = app;
    this.section = $("view-fleet");
    this.devices = [];
    this.truncated = false;
    this.loaded = false;
    this.sort = { key: "id", descending: false };
    this.search = $("fleet-search");
    this.search.addEventListener("input", () => this.render());
  }

  title() {
    return "Fleet";
  }

  enter() {
    if (this.loaded) this.render();
  }

  async refresh() {
    const { devices, truncated } = await api.allDevices();
    this.devices = devices;
    this.truncated = truncated;
    this.loaded = true;
    this.app.knownDevices(devices.map((d) => d.id));
    this.render();
  }

  /** The banner's note on stale data: when no device at all is reporting. */
  staleNote() {
    if (!this.devices.length || this.devices.some((d) => !d.stale)) return "";
    const newest = this.devices.map((d) => d.last_seen).filter(Boolean).sort().pop();
    return newest
      ? `Every device is stale: the newest report arrived ${full(new Date(newest))}.`
      : "No device has reported yet.";
  }

  metricNames() {
    const names = new Set();
    for (const device of this.devices) Object.keys(device.metrics || {}).forEach((m) => names.add(m));
    return [...names].sort();
  }

  value(device, key) {
    if (key === "id") return device.id;
    if (key === "status") return device.stale ? 1 : 0;
    if (key === "last_seen") return device.last_seen ? Date.parse(device.last_seen) : null;
    if (key === "open_alerts") return device.open_alerts ?? 0;
    const metric = (device.metrics || {})[key.slice("metric:".length)];
    return metric ? metric.value : null;
  }

  render() {
    const metrics = this.metricNames();
    const columns = [
      { key: "id", label: "Device" },
      { key: "status", label: "Status" },
      { key: "last_seen", label: "Last seen" },
      ...metrics.map((m) => ({ key: `metric:${m}`, label: m, num: true })),
      { key: "open_alerts", label: "Open alerts", num: true,
        title: "Open or acknowledged: raised and not yet resolved" },
    ];
    if (!columns.some((c) => c.key === this.sort.key)) this.sort = { key: "id", descending: false };
    const needle = this.search.value.trim().toLowerCase();
    const shown = this.devices.filter((d) => d.id.toLowerCase().includes(needle));
    const sign = this.sort.descending ? -1 : 1;
    shown.sort((a, b) => sign * compare(this.value(a, this.sort.key), this.value(b, this.sort.key))
      || compare(a.id, b.id));

    keepFocus(this.section, () => {
      $("fleet-head").replaceChildren(...columns.map((c) => this.header(c)));
      $("fleet-body").replaceChildren(...shown.map((d) => this.row(d, metrics)));
    });

    const stale = this.devices.filter((d) => d.stale).length;
    const alerts = this.devices.reduce((sum, d) => sum + (d.open_alerts || 0), 0);
    $("fleet-summary").textContent = `${this.devices.length}${this.truncated ? "+" : ""} devices · `
      + `${stale} stale · ${alerts} open alert${alerts === 1 ? "" : "s"}`;
    $("fleet-count").textContent = needle ? `${shown.length} of ${this.devices.length} shown` : "";
    let message = "";
    if (!this.devices.length) message = "No device has reported yet.";
    else if (!shown.length) message = `No device id contains “${this.search.value.trim()}”.`;
    else if (this.truncated) message = `Showing the first ${this.devices.length} devices only.`;
    say($("fleet-message"), message, "info");
  }

  header(column) {
    const sorted = this.sort.key === column.key;
    const th = el("th", {
      scope: "col",
      class: column.num ? "num" : "",
      title: column.title,
      "aria-sort": sorted ? (this.sort.descending ? "descending" : "ascending") : undefined,
    });
    const arrow = sorted ? (this.sort.descending ? "▼" : "▲") : "";
    th.append(el("button", {
      type: "button",
      class: "sort",
      "data-key": `sort:${column.key}`,
      onclick: () => {
        this.sort = { key: column.key, descending: sorted ? !this.sort.descending : false };
        this.render();
      },
    }, column.label, el("span", { class: "arrow", "aria-hidden": "true", text: arrow })));
    return th;
  }

  row(device, metrics) {
    const href = `#/devices/${encodeURIComponent(device.id)}`;
    const open = device.open_alerts || 0;
    return el("tr", { class: device.stale ? "stale" : "", "data-device": device.id },
      el("th", { scope: "row" }, el("a", { href, "data-key": `device:${device.id}` }, device.id)),
      el("td", {}, status(device.stale)),
      el("td", {}, when(device.last_seen)),
      metrics.map((m) => {
        const reading = (device.metrics || {})[m];
        return el("td", { class: "num", "data-metric": m },
          reading ? el("span", { title: `measured ${full(new Date(reading.time))}` },
            quantity(reading.value, ((device.metadata || {}).units || {})[m]))
            : el("span", { class: "muted", text: "–" }));
      }),
      el("td", { class: "num" }, open
        ? el("a", {
          href: `#/alerts?device=${encodeURIComponent(device.id)}`,
          class: "alert-count",
          "data-key": `alerts:${device.id}`,
          "aria-label": `${open} open alert${open === 1 ? "" : "s"} on ${device.id}`,
        }, String(open))
        : el("span", { class: "muted", text: "0" })));
  }
}

/** A device's reporting status as text and symbol, not only colour. */
export function status(stale) {
  return stale
    ? el("span", { class: "badge stale" }, el("span", { "aria-hidden": "true", text: "○ " }), "Stale")
    : el("span", { class: "badge ok" }, el("span", { "aria-hidden": "true", text: "● " }), "Reporting");
}
