// The fleet: every device with its state, last report, latest metric values and open alerts.

import * as api from "./api.js";
import { el, full, keepFocus, quantity, say, when } from "./format.js";

const $ = (id) => document.getElementById(id);

function compare(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null) return 1; // missing values sort last either way
  if (b === undefined || b === null) return -1;
  return a < b ? -1 : 1;
}

// A device's state is the API's verdict (`state` of GET /devices; README "Dashboard"), in
// the order the table sorts them: what needs a look first. Each has a symbol, so that a state
// never reads by colour alone.
const DEVICE_STATES = {
  offline: { label: "Offline", icon: "✕",
    title: "An offline alert is open or acknowledged and the device has not reported since" },
  stale: { label: "Stale", icon: "○", title: "No report within DEVICE_STALE_SECONDS" },
  never_reported: { label: "Never reported", icon: "◌",
    title: "Registered, but nothing received yet (not offline)" },
  reporting: { label: "Reporting", icon: "●", title: "Reported recently" },
  disabled: { label: "Disabled", icon: "⊘", title: "Switched off in the registry" },
};
const RANKS = Object.fromEntries(Object.keys(DEVICE_STATES).map((name, i) => [name, i]));

// Which devices each state button shows.
const STATES = {
  all: () => true,
  ...Object.fromEntries(Object.keys(DEVICE_STATES).map((name) => [name, (d) => d.state === name])),
  alerting: (d) => (d.open_alerts || 0) > 0,
};
const STATE_LABELS = {
  all: "All",
  ...Object.fromEntries(Object.entries(DEVICE_STATES).map(([name, s]) => [name, s.label])),
  alerting: "With open alerts",
};

export class FleetView {
  constructor(app) {
    this.app = app;
    this.section = $("view-fleet");
    this.devices = [];
    this.truncated = false;
    this.fleet = null; // GET /fleet's counts, read only when the list stops at its cap
    this.loaded = false;
    this.sort = { key: "status", descending: false }; // offline first
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
    // The whole list counts itself; past the cap only the API can count every device.
    const fleet = truncated ? await api.fleet() : null;
    this.devices = devices;
    this.truncated = truncated;
    this.fleet = fleet;
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
    if (key === "status") return RANKS[device.state] ?? RANKS.reporting;
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
    if (!columns.some((c) => c.key === this.sort.key)) this.sort = { key: "status", descending: false };
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
      ([name, test]) => [name, String(this.devices.filter(test).length)]));
    if (this.truncated) {
      // The states of the whole fleet from the API; what only the list knows gets a "+".
      for (const name of Object.keys(counts)) counts[name] += "+";
      if (this.fleet) {
        counts.all = String(this.fleet.devices);
        for (const [name, n] of Object.entries(this.fleet.states)) counts[name] = String(n);
      }
    }
    const alerts = this.devices.reduce((sum, d) => sum + (d.open_alerts || 0), 0);
    const plus = this.truncated ? "+" : "";
    const byState = Object.entries(DEVICE_STATES)
      .map(([name, s]) => `${counts[name]} ${s.label.toLowerCase()}`).join(", ");
    $("fleet-summary").textContent = `${counts.all} device${counts.all === "1" ? "" : "s"}: `
      + `${byState}; ${counts.alerting} with open alerts`
      + ` (${alerts}${plus} open alert${alerts === 1 && !plus ? "" : "s"})`;
    for (const button of this.stateButtons) {
      const name = button.dataset.state;
      button.setAttribute("aria-pressed", String(name === this.state));
      button.textContent = `${STATE_LABELS[name]} (${counts[name]})`;
      // Offline devices need a look: their button stands out while there are any.
      button.classList.toggle("attention", name === "offline" && !/^0\+?$/.test(counts[name]));
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
    // "stale" marks every silent row (as the API's `stale` does); the state its own look.
    return el("tr", { class: `state-${device.state}${device.stale ? " stale" : ""}`,
      "data-device": device.id, "data-state": device.state },
      el("th", { scope: "row" }, el("a", { href, "data-key": `device:${device.id}` }, device.id)),
      el("td", {}, status(device)),
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

/** A device's state as text and symbol, not only colour. Takes a device of the API, or (as the
 * device view passed it before states existed) its `stale` flag. */
export function status(device) {
  const name = typeof device === "boolean" ? (device ? "stale" : "reporting") : device.state;
  const state = DEVICE_STATES[name] || { label: String(name), icon: "?", title: "" };
  return el("span", { class: `badge ${name === "reporting" ? "ok" : name}`, title: state.title },
    el("span", { "aria-hidden": "true", text: `${state.icon} ` }), state.label);
}
