import { AuthRequired } from "./api";
import { $ } from "./dom";

export function showError(err: unknown): void {
  if (err instanceof AuthRequired) return; // the token form says it
  const e = $("#error");
  e.hidden = !err;
  e.textContent = err ? String((err as Error).message ?? err) : "";
}
