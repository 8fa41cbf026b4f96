/* The probability bars and percentages, one script for the served page (/static/bars.js) and the
   exported web app (bars.js beside index.html), so both show a ranking the same way. A classic
   script (no module): the exported app also opens from a local folder, where modules are refused. */
(function (global) {
  "use strict";

  /* 0.1234 -> "12.3%"; "<0.1%" and ">99.9%" at the ends, so a rounded 0% or 100% never misleads. */
  function percent(p, digits) {
    if (p === null || p === undefined || !isFinite(p)) return "–";
    const value = p * 100;
    if (digits === undefined && value > 0 && value < 0.1) return "<0.1%";
    if (digits === undefined && value >= 99.95 && value < 100) return ">99.9%";
    const d = digits !== undefined ? digits : value >= 99.95 || value < 0.05 ? 0 : 1;
    return value.toFixed(d) + "%";
  }

  function span(className, text) {
    const node = document.createElement("span");
    node.className = className;
    node.textContent = text;
    return node;
  }

  /* One <li> a species ({label, probability}, most likely first) in `list`, the first marked "top".
     A bar is an ARIA meter; with `animate` it grows from 0 on the next frames. */
  function renderBars(list, items, animate) {
    list.replaceChildren(...items.map((item, index) => {
      const li = document.createElement("li");
      li.className = "bar-row" + (index === 0 ? " top" : "");
      li.dataset.label = item.label;
      const head = document.createElement("div");
      head.className = "bar-head";
      head.append(span("bar-label", item.label), span("bar-value", percent(item.probability)));
      const track = document.createElement("div");
      track.className = "bar-track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-label", item.label);
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", (item.probability * 100).toFixed(1));
      track.setAttribute("aria-valuetext", percent(item.probability));
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      const width = Math.max(0.5, item.probability * 100) + "%";
      if (animate) requestAnimationFrame(() => requestAnimationFrame(() => { fill.style.width = width; }));
      else fill.style.width = width;
      track.append(fill);
      li.append(head, track);
      return li;
    }));
  }

  global.plantidBars = { percent, renderBars };
})(self);
