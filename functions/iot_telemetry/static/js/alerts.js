// Alerts by lifecycle state, filtered by severity and device, newest first, a page at a time.

import * as api from "./api.js";
import { duration, el, keepFocus, number, say, when } from "./format.js";

const $ = (id) => document.getElementById(id);

const STATES = ["open", "acknowledged", "resolved"];
const PAGE_SIZE = 25;
const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const ACTOR = /^[\p{L}\p{N}_ .@:-]{1,100}$/u;
const ACK_BY_KEY = "iot-telemetry.ack-by";
const SEVERITY = {
  critical: { icon: "▲", label: "Critical" },
  warning: { icon: "◆", label: "Warning" },
};
const CLEARS = { ">": "≤", ">=": "≤", "<": "≥", "<=": "≥" };

/** Severity as a symbol and a word, so colour is not the only signal. */
function severity(value) {
  const known = SEVERITY[value] || { icon: "■", label: value };
  return el("span", { class: `sev sev-${value}` },
    el("span", { class: "icon", "aria-hidden": "true", text: known.icon }), ` ${known.label}`);
}

/** An offline alert: the device sent nothing for window_seconds (metric and value are null). */
function offline(alert) {
  return alert.condition === "offline";
}

/** How long an offline device has been (or was) silent, from its last report. */
function silence(alert, until = Date.now()) {
  return duration((until - Date.parse(alert.first_seen)) / 1000);
}

function rule(alert) {
  if (offline(alert)) {
    const window = typeof alert.window_seconds === "number"
      ? `no report for ${duration(alert.window_seconds)}` : "no report";
    return [el("span", { class: "rule", text: alert.rule }), el("br"),
      el("span", { class: "muted", text: `offline: ${window}` })];
  }
  const condition = alert.condition
    ? `${alert.metric} ${alert.condition} ${number(alert.threshold)}` : alert.metric;
  const clears = alert.clear_threshold !== undefined && CLEARS[alert.condition]
    ? `, clears at ${CLEARS[alert.condition]} ${number(alert.clear_threshold)}` : "";
  return [el("span", { class: "rule", text: alert.rule }), el("br"),
    el("span", { class: "muted", text: condition + clears })];
}

function state(alert) {
  if (alert.state === "acknowledged") {
    return [el("span", { class: "state state-acknowledged", text: "Acknowledged" }),
      el("span", { class: "muted" }, ` by ${alert.acknowledged_by || "?"} `,
        alert.acknowledged_at ? when(alert.acknowledged_at) : "",
        offline(alert) ? ` · offline for ${silence(alert)}` : "")];
  }
  if (alert.state === "resolved") {
    // An alert whose rule was removed, renamed or no longer applies to the device never
    // cleared: say so instead of a value.
    const why = alert.resolved_reason === "rule_removed" ? " (rule removed)"
      : alert.resolved_reason === "rule_out_of_scope" ? " (rule no longer applies)"
      : offline(alert) && alert.resolved_at
        ? ` (reported again after ${silence(alert, Date.parse(alert.resolved_at))})`
      : alert.resolved_value !== undefined && alert.resolved_value !== null
        ? ` at ${number(alert.resolved_value)}` : "";
    return [el("span", { class: "state state-resolved", text: "Resolved" }),
      el("span", { class: "muted" }, " ", alert.resolved_at ? when(alert.resolved_at) : "", why)];
  }
  const open = el("span", { class: "state state-open", text: "Open" });
  return offline(alert)
    ? [open, el("span", { class: "muted", text: ` · offline for ${silence(alert)}` })] : [open];
}

export class AlertsView {
  constructor(app) {
    this.app = app;
    this.section = $("view-alerts");
    this.filters = { state: "open", severity: "", device: "" };
    this.cursors = [null]; // cursor of each page seen so far; the last is the current page
    this.nextCursor = null;
    this.seq = 0;
    this.tabs = [...document.querySelectorAll("#alert-tabs [role=tab]")];
    for (const tab of this.tabs) {
      tab.addEventListener("click", () => this.app.go(this.link({ state: tab.dataset.state })));
    }
    $("alert-tabs").addEventListener("keydown", (event) => this.tabKey(event));
    $("alert-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const device = $("alert-device").value.trim();
      if (device && !DEVICE_ID.test(device)) {
        say($("alerts-message"), `“${device}” is not a device id (letters, digits, . _ : -).`);
        $("alert-device").focus();
        return;
      }
      this.app.go(this.link({ severity: $("alert-severity").value, device }));
    });
    $("alert-severity").addEventListener("change", () => $("alert-filters").requestSubmit());
    $("alert-clear").addEventListener("click", () => {
      this.app.go(this.link({ severity: "", device: "" }));
    });
    const by = $("ack-by");
    by.value = localStorage.getItem(ACK_BY_KEY) || "dashboard";
    by.addEventListener("change", () => {
      if (ACTOR.test(by.value.trim())) localStorage.setItem(ACK_BY_KEY, by.value.trim());
    });
    $("alerts-download").addEventListener("click", () => this.download());
    $("alerts-newer").addEventListener("click", () => this.page(-1));
    $("alerts-older").addEventListener("click", () => this.page(1));
  }

  title() {
    return "Alerts";
  }

  link(changes) {
    const f = { ...this.filters, ...changes };
    const query = new URLSearchParams();
    if (f.state !== "open") query.set("state", f.state);
    if (f.severity) query.set("severity", f.severity);
    if (f.device) query.set("device", f.device);
    const text = query.toString();
    return `#/alerts${text ? `?${text}` : ""}`;
  }

  enter({ query }) {
    const filters = {
      state: STATES.includes(query.get("state")) ? query.get("state") : "open",
      severity: SEVERITY[query.get("severity")] ? query.get("severity") : "",
      device: query.get("device") || "",
    };
    if (JSON.stringify(filters) !== JSON.stringify(this.filters)) {
      this.cursors = [null];
      $("alerts-body").replaceChildren();
    }
    this.filters = filters;
    for (const tab of this.tabs) {
      const selected = tab.dataset.state === filters.state;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      if (selected) $("alerts-panel").setAttribute("aria-labelledby", tab.id);
    }
    $("alert-severity").value = filters.severity;
    $("alert-device").value = filters.device;
    say($("alerts-message"), "");
  }

  /** Arrow keys, Home and End move between the tabs (the ARIA tabs pattern). */
  tabKey(event) {
    const index = this.tabs.indexOf(document.activeElement);
    if (index < 0) return;
    const moves = { ArrowLeft: index - 1, ArrowRight: index + 1, Home: 0, End: this.tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const tab = this.tabs[(moves[event.key] + this.tabs.length) % this.tabs.length];
    tab.focus();
    this.app.go(this.link({ state: tab.dataset.state }));
  }

  page(direction) {
    if (direction > 0 && this.nextCursor) this.cursors.push(this.nextCursor);
    else if (direction < 0 && this.cursors.length > 1) this.cursors.pop();
    else return;
    this.app.refreshNow();
  }

  staleNote() {
    return "";
  }

  /** Save the alerts of this tab and these filters (every page, as the API allows) as CSV. */
  async download() {
    const button = $("alerts-download");
    const { state: lifecycle, severity: level, device } = this.filters;
    button.disabled = true;
    try {
      const name = await api.downloadCsv("alerts", {
        state: lifecycle, severity: level, device_id: device,
      }, "alerts.csv");
      this.app.announce(`Downloaded ${name}.`);
    } catch (err) {
      say($("alerts-message"), `Could not download the alerts: ${err.message}`);
      if (err.needsToken || err.unreachable) this.app.failed(err);
    } finally {
      button.disabled = false;
    }
  }

  async refresh() {
    const seq = ++this.seq;
    const { state: lifecycle, severity: level, device } = this.filters;
    let page;
    try {
      page = await api.alerts({
        state: lifecycle, severity: level, device_id: device, limit: PAGE_SIZE,
        cursor: this.cursors[this.cursors.length - 1],
      });
    } catch (err) {
      if (err.unreachable || seq !== this.seq) throw err;
      say($("alerts-message"), err.message);
      return;
    }
    if (seq !== this.seq) return;
    this.nextCursor = page.next_cursor;
    keepFocus(this.section, () => {
      $("alerts-body").replaceChildren(...page.alerts.map((a) => this.row(a)));
    });
    const filtered = [level && SEVERITY[level].label.toLowerCase(), device && `on ${device}`]
      .filter(Boolean).join(" ");
    say($("alerts-message"), page.alerts.length ? ""
      : `No ${filtered ? `${filtered} ` : ""}${lifecycle} alerts${this.cursors.length > 1 ? " on this page" : ""}.`,
    "info");
    $("alerts-page").textContent = `Page ${this.cursors.length}`;
    $("alerts-newer").disabled = this.cursors.length <= 1;
    $("alerts-older").disabled = !this.nextCursor;
  }

  row(alert) {
    const label = `${alert.rule} on ${alert.device_id}`;
    const action = alert.state === "open"
      ? el("button", {
        type: "button",
        class: "ack",
        "data-key": `ack:${alert.id}`,
        "aria-label": `Acknowledge ${label}`,
        onclick: (event) => this.acknowledge(alert, event.currentTarget),
      }, "Acknowledge")
      : "";
    return el("tr", { "data-alert": alert.id, "data-state": alert.state, class: `sev-row-${alert.severity}` },
      el("td", {}, severity(alert.severity)),
      el("td", {}, el("a", {
        href: `#/devices/${encodeURIComponent(alert.device_id)}`,
        "data-key": `device:${alert.id}`,
      }, alert.device_id)),
      el("td", {}, rule(alert)),
      el("td", {}, when(alert.raised_at)),
      el("td", {}, when(alert.last_seen)),
      el("td", { class: "num", text: String(alert.count) }),
      el("td", { class: "num" }, number(alert.peak),
        alert.last_value !== undefined ? el("span", { class: "muted" }, el("br"), `last ${number(alert.last_value)}`) : ""),
      el("td", { class: "state-cell", tabindex: "-1", "data-key": `state:${alert.id}` }, state(alert)),
      el("td", {}, action));
  }

  async acknowledge(alert, button) {
    const by = $("ack-by").value.trim();
    if (!ACTOR.test(by)) {
      say($("alerts-message"), "Fill in “Acknowledge as” (letters, digits, space, . @ : _ -).");
      $("ack-by").focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Acknowledging…";
    let updated;
    try {
      updated = await api.acknowledge(alert.id, by);
    } catch (err) {
      if (err.status === 409 || err.status === 404) {
        try { updated = await api.alert(alert.id); } catch { updated = null; }
      }
      if (!updated) {
        button.disabled = false;
        button.textContent = "Acknowledge";
        say($("alerts-message"), `Could not acknowledge ${alert.rule} on ${alert.device_id}: ${err.message}`);
        if (err.unreachable) this.app.failed(err);
        return;
      }
    }
    // The table may have been refreshed meanwhile: update the alert's row as it is now.
    const row = $("alerts-body").querySelector(`tr[data-alert="${CSS.escape(alert.id)}"]`);
    if (row) {
      const fresh = this.row(updated);
      row.replaceWith(fresh);
      fresh.querySelector(".state-cell").focus();
    }
    const outcome = updated.state === "acknowledged" ? `acknowledged by ${updated.acknowledged_by}`
      : `already ${updated.state}`;
    this.app.announce(`${alert.rule} on ${alert.device_id} ${outcome}.`);
  }
}
