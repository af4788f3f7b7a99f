// A tiny render layer over the DOM: h() builds an element from a tag, its
// properties and its children, and mount() replaces what an element shows.
// Views rebuild the part of the page whose data changed; there is no
// virtual DOM and no framework.

/** Child is what h() and mount() accept as content. */
export type Child = Node | string | number | bigint | boolean | null | undefined | readonly Child[];

/**
 * Props of an element: `class`, event handlers (`onclick`, `oninput`, ...),
 * DOM properties that inputs keep apart from attributes (`value`, `checked`,
 * `disabled`, `hidden`) and any other attribute. null, undefined and false
 * leave an attribute out.
 */
export type Props = Record<string, unknown>;

const properties = new Set(["value", "checked", "disabled", "hidden", "selected"]);

/** h creates an element. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props?: Props | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value as EventListener);
    } else if (properties.has(name)) {
      (el as unknown as Record<string, unknown>)[name] = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else if (value !== false && value !== null && value !== undefined) {
      el.setAttribute(name, String(value));
    }
  }
  el.append(...nodes(children));
  return el;
}

/** mount makes children the content of parent, replacing what it held. */
export function mount(parent: Element, ...children: Child[]): void {
  parent.replaceChildren(...nodes(children));
}

function nodes(children: readonly Child[]): (Node | string)[] {
  const out: (Node | string)[] = [];
  for (const c of children) {
    if (c === null || c === undefined || c === false || c === true) {
      continue;
    }
    if (Array.isArray(c)) {
      out.push(...nodes(c));
    } else if (c instanceof Node) {
      out.push(c);
    } else {
      out.push(String(c));
    }
  }
  return out;
}
