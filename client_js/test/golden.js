// Loads the golden files shared with the Python tests (tests/golden/).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const dir = fileURLToPath(new URL("../../tests/golden/", import.meta.url));

/** @param {string} name */
export function golden(name) {
  return JSON.parse(readFileSync(dir + name, "utf8"));
}

/** JSON has no infinity: the vectors write "inf"/"-inf". @param {unknown} x */
export function dec(x) {
  return x === "inf" ? Infinity : x === "-inf" ? -Infinity : x;
}
