// The dashboard: routes (#/, #/devices/{id}, #/alerts), refresh every 5 s, and the banner that
// says when the API cannot be reached or what is shown is stale.

import * as api from "./api.js";
import { AlertsView } from "./alerts.js";
import { DeviceView } from "./device.js";
import { FleetView } from "./fleet.js";
import { clock, el } from "./format.js";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

class App {
  constructor() {
    this.views = { fleet: new FleetView(this), device: new DeviceView(this), alerts: new AlertsView(this) };
    this.current = null;
    this.timer = null;
    this.lastOk = null; // when the API last answered
    this.failure = null; // { error, since } while it does not
    this.devicesKnown = false;
    window.addEventListener("hashchange", () => this.route(true));
    $("auto-refresh").addEventListener("change", () => {
      this.renderUpdated();
      this.renderBanner();
      if ($("auto-refresh").checked) this.refreshNow();
      else clearTimeout(this.timer);
    });
    $("refresh-now").addEventListener("click", () => this.refreshNow());
    $("token-change").addEventListener("click", () => this.askToken(null));
    $("token-forget").addEventListener("click", () => this.useToken(""));
    $("token-status").hidden = !api.token();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && $("auto-refresh").checked) this.refreshNow();
    });
    this.route(false);
  }

  parse() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const mark = hash.indexOf("?");
    const path = mark < 0 ? hash : hash.slice(0, mark);
    const query = new URLSearchParams(mark < 0 ? "" : hash.slice(mark + 1));
    const device = path.match(/^\/devices\/([^/]+)\/?$/);
    if (device) {
      try {
        return { name: "device", id: decodeURIComponent(device[1]), query };
      } catch {
        return { name: "fleet", query };
      }
    }
    if (path.replace(/\/$/, "") === "/alerts") return { name: "alerts", query };
    return { name: "fleet", query };
  }

  route(navigated) {
    const where = this.parse();
    const view = this.views[where.name];
    const moved = view !== this.current;
    for (const [name, each] of Object.entries(this.views)) each.section.hidden = name !== where.name;
    for (const link of document.querySelectorAll("[data-nav]")) {
      const here = link.dataset.nav === where.name;
      if (here) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    view.enter(where);
    this.current = view;
    document.title = `${view.title()} · IoT telemetry`;
    if (navigated && moved) {
      // Tell assistive technology the view changed: focus its heading.
      const heading = view.section.querySelector("h1");
      heading.tabIndex = -1;
      heading.focus();
    }
    if (where.name === "alerts" && !this.devicesKnown) {
      api.allDevices(2000).then(({ devices }) => this.knownDevices(devices.map((d) => d.id)), () => {});
    }
    this.refreshNow();
  }

  /** Navigate to `hash` (or refresh when already there). */
  go(hash) {
    if (location.hash === hash || (hash === "#/" && !location.hash)) this.refreshNow();
    else location.hash = hash;
  }

  async refreshNow() {
    clearTimeout(this.timer);
    const view = this.current;
    try {
      await view.refresh();
      this.lastOk = new Date();
      this.failure = null;
    } catch (err) {
      this.failed(err instanceof api.ApiError ? err
        : new api.ApiError(`the page failed: ${err.message}`, { unreachable: true }));
      if (!(err instanceof api.ApiError)) console.error(err);
    }
    if (view === this.current) {
      this.renderBanner();
      this.renderUpdated();
    }
    this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    if (!$("auto-refresh").checked) return;
    this.timer = setTimeout(() => {
      if (document.hidden) this.schedule();
      else this.refreshNow();
    }, REFRESH_MS);
  }

  failed(error) {
    this.failure = { error, since: this.failure ? this.failure.since : new Date() };
    if (error.needsToken) this.askToken(error.message);
    this.renderBanner();
  }

  /** Show the token form (reason null: the operator asked to change the token); the token is
   * kept in sessionStorage, for this tab only, and sent as a bearer token. */
  askToken(reason) {
    const form = $("token-form");
    $("token-why").textContent = reason === null ? "Enter another API token."
      : `The API refused the request (${reason}): enter an API token.`;
    if (!form.hidden) return;
    form.hidden = false;
    form.onsubmit = (event) => {
      event.preventDefault();
      this.useToken($("token-input").value.trim());
    };
    $("token-input").focus();
  }

  /** Start over with another token (or none): a token may see other devices than the last
   * one, so nothing the page read with the last one (lists, counts, suggestions) stays. */
  useToken(value) {
    api.setToken(value);
    $("token-input").value = "";
    location.reload();
  }

  renderBanner() {
    const banner = $("banner");
    let kind = "";
    let title = "";
    let text = "";
    if (this.failure) {
      const { error, since } = this.failure;
      kind = "unreachable";
      title = error.status ? `The API answers ${error.status}: ${error.message}.`
        : `The API cannot be reached: ${error.message}.`;
      text = `Since ${clock(since)}. `
        + (this.lastOk ? `The data shown is from ${clock(this.lastOk)} and may be out of date. `
          : "No data could be loaded. ")
        + ($("auto-refresh").checked ? `Retrying every ${REFRESH_MS / 1000} s.` : "Use “Refresh now” to retry.");
    } else if (this.current && this.current.staleNote()) {
      kind = "stale";
      title = "Data is stale.";
      text = this.current.staleNote();
    }
    document.body.dataset.api = this.failure ? "unreachable" : "ok";
    $("main").classList.toggle("outdated", Boolean(this.failure));
    const key = `${kind}|${title}|${text}`;
    if (banner.dataset.key === key) return; // unchanged: do not make screen readers repeat it
    banner.dataset.key = key;
    banner.dataset.kind = kind;
    banner.hidden = !kind;
    banner.replaceChildren(...(kind ? [
      el("span", { class: "icon", "aria-hidden": "true", text: kind === "unreachable" ? "✕" : "⚠" }),
      el("strong", { text: title }), " ", text] : []));
  }

  renderUpdated() {
    const paused = $("auto-refresh").checked ? "" : "Paused · ";
    $("updated").textContent = this.lastOk ? `${paused}Updated ${clock(this.lastOk)}` : `${paused}Not loaded`;
  }

  /** Device ids the alert filter offers as suggestions. */
  knownDevices(ids) {
    this.devicesKnown = true;
    const list = $("device-ids");
    if (list.options.length === ids.length && [...list.options].every((o, i) => o.value === ids[i])) return;
    list.replaceChildren(...ids.map((id) => el("option", { value: id })));
  }

  /** Say something to screen reader users (and tests) without moving focus. */
  announce(text) {
    const status = $("status");
    status.textContent = "";
    setTimeout(() => { status.textContent = text; }, 50);
  }
}

new App();
