// The review page: every label from the server is put into the page as text (textContent, option
// text), never parsed as HTML: class names are folder names and may hold any character.
"use strict";

const state = { classes: [], items: [], selected: 0, history: [] };
const grid = document.getElementById("grid");

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) node.append(child);
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(method, url, body) {
  const response = await fetch(url, {
    method, headers: body ? { "content-type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

function statusText(item) {
  const d = item.decision;
  if (!d) return "undecided";
  if (d.action === "relabel") return "relabel → " + d.label;
  return d.action === "keep" ? "keep" : "exclude";
}

function pct(p) { return p === null || p === undefined ? "" : " (" + Math.round(100 * p) + "%)"; }

function card(item, index) {
  const select = el("select", { ariaLabel: "Relabel to", className: "relabel-select" },
    [el("option", { value: "", textContent: "relabel to…" })].concat(
      state.classes.map((c) => el("option", { value: c, textContent: c }))));
  select.addEventListener("change", () => { if (select.value) decide(index, "relabel", select.value); });
  const button = (text, cls, handler) => {
    const b = el("button", { type: "button", textContent: text, className: cls });
    b.addEventListener("click", (event) => { event.stopPropagation(); select_(index); handler(); });
    return b;
  };
  const node = el("article", { className: "card", tabIndex: 0 }, [
    el("img", { src: "/api/photo/" + item.id, alt: item.name, loading: "lazy" }),
    el("div", { className: "why", textContent: item.sources.join(", ") }),
    el("div", { className: "given", textContent: item.given ? "given: " + item.given : "unlabelled" }),
    el("div", { className: "suggested", textContent: "suggested: " + item.suggested + pct(item.probability) }),
    el("div", { className: "name", textContent: item.path }),
    el("div", { className: "status", textContent: statusText(item) }),
    el("div", { className: "actions" }, [
      button("Keep", "keep", () => decide(index, "keep")),
      button("Take suggestion", "accept", () => accept(index)),
      select,
      button("Exclude", "exclude", () => decide(index, "exclude")),
      button("Undo", "undo", () => undo(index)),
    ]),
  ]);
  node.dataset.id = item.id;
  node.dataset.action = item.decision ? item.decision.action : "";
  node.addEventListener("click", () => select_(index));
  return node;
}

function render() {
  const decided = state.items.filter((i) => i.decision).length;
  document.getElementById("summary").textContent =
    state.items.length + " photo(s) to review, " + decided + " decided";
  grid.replaceChildren(...state.items.map(card));
  if (!state.items.length) {
    grid.replaceChildren(el("p", { className: "empty",
      textContent: "Nothing to review: run plantid audit RUN, plantid evaluate RUN --split val, or pass --sorted FOLDER." }));
  }
  select_(Math.min(state.selected, state.items.length - 1), false);
}

function select_(index, focus = true) {
  if (index < 0 || index >= state.items.length) return;
  state.selected = index;
  grid.querySelectorAll(".card").forEach((c, i) => c.classList.toggle("selected", i === index));
  const node = grid.children[index];
  if (focus && node) { node.focus({ preventScroll: false }); }
}

function update(index, item) {
  state.items[index] = item;
  const old = grid.children[index];
  const fresh = card(item, index);
  old.replaceWith(fresh);
  const decided = state.items.filter((i) => i.decision).length;
  document.getElementById("summary").textContent =
    state.items.length + " photo(s) to review, " + decided + " decided";
  select_(index);
}

async function decide(index, action, label) {
  try {
    const item = await call("POST", "/api/decide", { id: state.items[index].id, action, label: label || "" });
    state.history.push(index);
    update(index, item);
    showError("");
    if (index + 1 < state.items.length) select_(index + 1);
  } catch (err) { showError(err.message); }
}

function accept(index) {
  const item = state.items[index];
  if (item.given && item.suggested === item.given) return decide(index, "keep");
  return decide(index, "relabel", item.suggested);
}

async function undo(index) {
  try {
    update(index, await call("POST", "/api/undo", { id: state.items[index].id }));
    showError("");
  } catch (err) { showError(err.message); }
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
  const i = state.selected;
  const key = event.key.toLowerCase();
  if (key === "arrowright" || key === "l") select_(i + 1);
  else if (key === "arrowleft" || key === "h") select_(i - 1);
  else if (key === "k") decide(i, "keep");
  else if (key === "x") decide(i, "exclude");
  else if (key === "s") accept(i);
  else if (key === "u") undo(i);
  else if (key === "z") { if (state.history.length) undo(state.history.pop()); }
  else if (/^[1-9]$/.test(key) && Number(key) <= state.classes.length) decide(i, "relabel", state.classes[Number(key) - 1]);
  else return;
  event.preventDefault();
});

(async () => {
  try {
    const data = await call("GET", "/api/items");
    state.classes = data.classes;
    state.items = data.items;
    document.getElementById("run-name").textContent = data.run;
    document.getElementById("corrections").textContent = data.corrections;
    document.getElementById("class-keys").replaceChildren(...data.classes.slice(0, 9).map((c, i) =>
      el("li", {}, [el("kbd", { textContent: String(i + 1) }), " " + c])));
    render();
    document.body.dataset.state = "ready";
  } catch (err) { showError(err.message); }
})();
