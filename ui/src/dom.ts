// Element builders. Every string a user (or a captured packet) controls is set as text, never parsed
// as HTML: the UI never hands a string to an HTML parser (tests/api/test_ui_bundle.py looks for the sinks).

export type Child = Node | string | number | null | undefined | false;
type Handler = (event: Event) => void;
export interface Props {
  [attr: string]: string | number | boolean | Handler | undefined | null;
}

function apply(e: Element, props: Props | undefined): void {
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v as Handler);
    else if (k === "text") e.textContent = String(v);
    else if (k === "style") {
      // through the CSSOM: the server's Content-Security-Policy (style-src 'self') drops style attributes
      for (const decl of String(v).split(";")) {
        const [name, value] = decl.split(":");
        if (name && value) (e as HTMLElement | SVGElement).style.setProperty(name.trim(), value.trim());
      }
    }
    else e.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(e: Element, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
}

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props?: Props, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  apply(e, props);
  append(e, children);
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function s<K extends keyof SVGElementTagNameMap>(tag: K, props?: Props, ...children: Child[]): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG_NS, tag);
  apply(e, props);
  append(e, children);
  return e;
}

export const $ = <T extends Element = HTMLElement>(sel: string): T => {
  const e = document.querySelector<T>(sel);
  if (!e) throw new Error(`no element ${sel}`);
  return e;
};

/** Enter and Space act as a click on an element made focusable (tabindex=0, a role of button or link). */
export function activate(e: Element, action: () => void): void {
  e.addEventListener("click", action);
  e.addEventListener("keydown", (ev) => {
    const key = (ev as KeyboardEvent).key;
    if (key === "Enter" || key === " ") { ev.preventDefault(); action(); }
  });
}
