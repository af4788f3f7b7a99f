// The header's token field: where the user gives the bearer token a
// gateway started with --auth-file wants (client.ts keeps and sends it).
// The field is a password input, emptied once the token is in use, and
// the page shows only whether a token is set: never the token, which
// would otherwise sit in screenshots and screen shares.
import { hasToken, onTokenChange, setToken } from "./client.js";
import { h } from "./dom.js";

export function tokenField(): HTMLElement {
  const input = h("input", {
    type: "password", id: "token-input", name: "token", autocomplete: "off", spellcheck: "false",
    "aria-label": "Bearer token",
  });
  const state = h("span", { class: "token-state", id: "token-state", role: "status" });
  const forget = h("button", { type: "button", id: "token-forget", onclick: () => setToken("") }, "Forget");

  function sync() {
    const set = hasToken();
    state.textContent = set ? "Token set" : "No token";
    state.dataset.set = String(set);
    input.placeholder = set ? "paste another to replace it" : "paste a bearer token";
    forget.disabled = !set;
  }

  function use(e: Event) {
    e.preventDefault();
    if (input.value.trim() === "") {
      input.focus();
      return;
    }
    setToken(input.value);
    input.value = "";
  }

  onTokenChange(sync);
  sync();
  return h("form", {
    class: "token", id: "token-form", onsubmit: use,
    title: "Sent as Authorization: Bearer on every call; kept for this tab only (sessionStorage). A link can carry one: /ui/#token=…",
  },
  state,
  input,
  h("button", { type: "submit", id: "token-use" }, "Use"),
  forget);
}
