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

// Which devices each state button shows; "stale" is the API's verdict (DEVICE_STALE_SECONDS).
const STATES = {
  all: () => true,
  reporting: (d) => !d.stale,
  stale: (d) => d.stale,
  alerting: (d) => (d.open_alerts || 0) > 0,
};
const STATE_LABELS = { all: "All", reporting: "Reporting", stale: "Stale", alerting: "With open alerts" };

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
    this.state = "all";
    this.stateButtons = [...document.querySelectorAll("#fleet-states button")];
    for (const button of this.stateButtons) {
      button.addEventListener("click", () => {
        this.state = button.dataset.state;
        this.render();
      });
    }
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
    const inState = STATES[this.state];
    const shown = this.devices.filter((d) => d.id.toLowerCase().includes(needle) && inState(d));
    const sign = this.sort.descending ? -1 : 1;
    shown.sort((a, b) => sign * compare(this.value(a, this.sort.key), this.value(b, this.sort.key))
      || compare(a.id, b.id));

    keepFocus(this.section, () => {
      $("fleet-head").replaceChildren(...columns.map((c) => this.header(c)));
      $("fleet-body").replaceChildren(...shown.map((d) => this.row(d, metrics)));
    });

    const counts = Object.fromEntries(Object.entries(STATES).map(
      ([name, test]) => [name, this.devices.filter(test).length]));
    const alerts = this.devices.reduce((sum, d) => sum + (d.open_alerts || 0), 0);
    const plus = this.truncated ? "+" : "";
    $("fleet-summary").textContent = `${counts.all}${plus} device${counts.all === 1 ? "" : "s"}: `
      + `${counts.reporting} reporting, ${counts.stale} stale, ${counts.alerting} with open alerts`
      + ` (${alerts} open alert${alerts === 1 ? "" : "s"})`;
    for (const button of this.stateButtons) {
      const name = button.dataset.state;
      button.setAttribute("aria-pressed", String(name === this.state));
      button.textContent = `${STATE_LABELS[name]} (${counts[name]}${plus})`;
    }
    const filtered = needle || this.state !== "all";
    $("fleet-count").textContent = filtered ? `${shown.length} of ${this.devices.length} shown` : "";
    const which = this.state === "all" ? "" : `${STATE_LABELS[this.state].toLowerCase()} `;
    let message = "";
    if (!this.devices.length) message = "No device has reported yet.";
    else if (!shown.length && !needle) message = `No ${which}devices.`;
    else if (!shown.length) message = `No ${which}device id contains “${this.search.value.trim()}”.`;
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
