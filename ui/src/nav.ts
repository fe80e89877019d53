// Navigation: the current state, and going to another one (the URL follows, history keeps the way back).
import { type State, parseState, stateQuery } from "./state";

let current: State = parseState(location.search);
let render: (st: State) => void = () => {};

export const state = (): State => current;
export const setRender = (f: (st: State) => void): void => { render = f; };

/** Go to the state with ``patch`` applied: a new history entry unless ``replace``. */
export function go(patch: Partial<State>, replace = false): void {
  current = { ...current, ...patch };
  const url = stateQuery(current);
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render(current);
}

export function fromLocation(): void {
  current = parseState(location.search);
  render(current);
}

/** The link of a state (for <a href>: opens in a new tab too). */
export const href = (patch: Partial<State>): string => stateQuery({ ...current, ...patch });
