// Building DOM nodes and formatting times and numbers for people.

/** Create an element: `attrs` are attributes, except `text`, `class` and `on*` handlers. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

// Two decimals everywhere, so that readings line up and 21.5 does not sit beside 21.53.
const numberFormat = new Intl.NumberFormat(undefined, {
  minimumFractionDigits: 2, maximumFractionDigits: 2,
});
// How the registry's unit names (`iot-telemetry devices add --unit temperature=celsius`) read.
const UNIT_SYMBOLS = {
  celsius: "°C", fahrenheit: "°F", kelvin: "K", percent: "%", pct: "%", volt: "V", volts: "V",
  pascal: "Pa", hectopascal: "hPa", hpa: "hPa", watt: "W", watts: "W",
};
const clockFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});
const fullFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", hourCycle: "h23", timeZoneName: "short",
});

export function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? numberFormat.format(value) : "–";
}

/** A unit as shown after a number ("°C" for celsius); "" when the registry knows none. */
export function unitSymbol(unit) {
  if (typeof unit !== "string" || !unit) return "";
  return UNIT_SYMBOLS[unit.toLowerCase()] || unit;
}

/** A number with its unit, if any: "21.50 °C", "40.20 %", "3.00". */
export function quantity(value, unit) {
  const text = number(value);
  const symbol = unitSymbol(unit);
  return symbol && text !== "–" ? `${text} ${symbol}` : text;
}

/** "1 bucket", "3 buckets". */
export function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

export function clock(date) {
  return clockFormat.format(date);
}

export function full(date) {
  return fullFormat.format(date);
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago" (or "in 3 s" for a clock ahead of ours). */
export function ago(iso, now = Date.now()) {
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (seconds < 0) return seconds > -5 ? "just now" : `in ${-seconds} s`;
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400 * 2) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** A span of time for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) {
    const minutes = Math.floor((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
  }
  const hours = Math.floor((s % 86400) / 3600);
  return `${Math.floor(s / 86400)} d${hours ? ` ${hours} h` : ""}`;
}

/** A <time> showing how long ago, with the full local time as its title. */
export function when(iso) {
  if (!iso) return el("span", { class: "muted", text: "never" });
  return el("time", { datetime: iso, title: full(new Date(iso)), text: ago(iso) });
}

/** A <time> showing the local date and time. */
export function at(iso) {
  if (!iso) return el("span", { class: "muted", text: "–" });
  const date = new Date(iso);
  return el("time", { datetime: iso, title: ago(iso), text: full(date) });
}

/** Run `render` (which rebuilds part of `root`) keeping keyboard focus on the same control. */
export function keepFocus(root, render) {
  const active = document.activeElement;
  const key = active && root.contains(active) ? active.dataset.key : undefined;
  render();
  if (key !== undefined) {
    const again = root.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again && again !== document.activeElement) again.focus();
  }
}

/** Show `text` in a message paragraph, or hide it when `text` is empty. */
export function say(node, text, kind = "error") {
  node.textContent = text || "";
  node.hidden = !text;
  node.dataset.kind = kind;
}
