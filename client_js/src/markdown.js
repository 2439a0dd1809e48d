// Markdown for streamed answers: safe by construction, and stable while the text is still coming.
//
// LLM answers are Markdown. This renders the common part of it — paragraphs with line breaks,
// headings, fenced and indented code, block quotes, lists, rules; inline code, strong, emphasis,
// links — in two steps: parseMarkdown(text) builds a small tree of plain objects (tested under
// node), and renderMarkdown(container, text) turns it into DOM nodes with createElement and text
// nodes only. No HTML in the answer is ever parsed as HTML (a "<script>" is text), and a link is
// only a link when its URL is http(s) or mailto.
//
// While a stream is still coming (`partial: true`), an inline marker the text has opened but not
// yet closed ("**bo") is shown as what it will be (bold "bo") rather than as stray asterisks that
// would vanish a frame later, and an unclosed code fence is code already: the text the pacer
// reveals changes style at most once, not back and forth.

/**
 * @typedef {{type: "text", text: string} | {type: "code", text: string} | {type: "break"}
 *   | {type: "strong" | "em", children: Inline[]} | {type: "link", href: string, children: Inline[]}} Inline
 * @typedef {{type: "paragraph", children: Inline[]} | {type: "heading", level: number, children: Inline[]}
 *   | {type: "codeblock", lang: string, text: string} | {type: "blockquote", children: Block[]}
 *   | {type: "list", ordered: boolean, start: number, items: Inline[][]} | {type: "rule"}} Block
 */

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const SAFE_URL = /^(https?:|mailto:)/i;

/**
 * @param {string} text
 * @param {{partial?: boolean}} [options]  partial: the text is still streaming
 * @returns {Block[]}
 */
export function parseMarkdown(text, options = {}) {
  return parseBlocks(text.replace(/\r\n?/g, "\n").split("\n"), options.partial ?? false);
}

/** @param {string[]} lines @param {boolean} partial @returns {Block[]} */
function parseBlocks(lines, partial) {
  /** @type {Block[]} */
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const end = lines.findIndex((l, k) => k > i && l.trim().startsWith(fence[1]));
      const stop = end < 0 ? lines.length : end;
      blocks.push({ type: "codeblock", lang: fence[2], text: lines.slice(i + 1, stop).join("\n") });
      i = stop + 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      blocks.push({ type: "heading", level: heading[1].length, children: parseInline(heading[2], partial && i === lines.length - 1) });
      i++;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push({ type: "rule" });
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(/** @type {RegExpExecArray} */ (QUOTE.exec(lines[i++]))[1]);
      blocks.push({ type: "blockquote", children: parseBlocks(quoted, partial && i === lines.length) });
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const start = ordered ? Number(/** @type {RegExpExecArray} */ (NUMBERED.exec(line))[1]) : 1;
      /** @type {string[]} */
      const items = [];
      while (i < lines.length && lines[i].trim() !== "") {
        const m = pattern.exec(lines[i]);
        if (m) items.push(ordered ? m[2] : m[1]);
        else if (items.length && /^\s+\S/.test(lines[i])) items[items.length - 1] += `\n${lines[i].trim()}`;
        else break;
        i++;
      }
      const last = partial && i === lines.length;
      blocks.push({ type: "list", ordered, start, items: items.map((t, k) => parseInline(t, last && k === items.length - 1)) });
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const code = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || (lines[i].trim() === "" && /^( {4}|\t)/.test(lines[i + 1] ?? "")))) {
        code.push(lines[i++].replace(/^( {4}|\t)/, ""));
      }
      blocks.push({ type: "codeblock", lang: "", text: code.join("\n") });
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i])) para.push(lines[i++]);
    if (para.length === 0) para.push(lines[i++]); // a line no rule above took: keep it as text
    blocks.push({ type: "paragraph", children: parseInline(para.join("\n"), partial && i === lines.length) });
  }
  return blocks;
}

/** @param {string} line */
function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || BULLET.test(line) || NUMBERED.test(line);
}

/**
 * Inline Markdown. An opener without its closer is plain text, except at the end of a partial
 * text (see the module comment).
 * @param {string} text @param {boolean} partial @returns {Inline[]}
 */
export function parseInline(text, partial = false) {
  /** @type {Inline[]} */
  const out = [];
  let plain = "";
  const flush = () => {
    if (plain) out.push({ type: "text", text: plain });
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch === "\\" && i + 1 < text.length && /[\\`*_[\]()#+\-.!>~]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (ch === "\n") {
      flush();
      out.push({ type: "break" });
      i++;
      continue;
    }
    if (ch === "`") {
      const ticks = /^`+/.exec(text.slice(i))?.[0] ?? "`";
      const end = text.indexOf(ticks, i + ticks.length);
      if (end >= 0 || partial) {
        flush();
        const code = text.slice(i + ticks.length, end >= 0 ? end : text.length);
        out.push({ type: "code", text: ticks.length > 1 ? code.trim() : code });
        i = end >= 0 ? end + ticks.length : text.length;
        continue;
      }
    }
    if (ch === "*" || ch === "_") {
      const marker = text.startsWith(ch + ch, i) ? ch + ch : ch;
      const span = closing(text, i, marker, partial);
      if (span) {
        flush();
        out.push({ type: marker.length === 2 ? "strong" : "em", children: parseInline(span.inner, span.open) });
        i = span.next;
        continue;
      }
    }
    if (ch === "[") {
      const link = /^\[([^\]\n]*)\]\(((?:[^()\s]|\([^()\s]*\))*)\)/.exec(text.slice(i));
      if (link) {
        flush();
        const children = parseInline(link[1]);
        if (SAFE_URL.test(link[2])) out.push({ type: "link", href: link[2], children });
        else out.push(...children); // javascript:, data:, relative: the text without the link
        i += link[0].length;
        continue;
      }
    }
    plain += ch;
    i++;
  }
  flush();
  return out;
}

/**
 * Where the emphasis opened by `marker` at `i` closes.
 * @param {string} text @param {number} i @param {string} marker @param {boolean} partial
 * @returns {{inner: string, next: number, open: boolean} | null}
 */
function closing(text, i, marker, partial) {
  const from = i + marker.length;
  if (from >= text.length && partial) return { inner: "", next: text.length, open: true }; // "**" just arrived
  if (from >= text.length || /\s/.test(text[from])) return null; // "a * b" is not emphasis
  if (marker[0] === "_" && i > 0 && /\w/.test(text[i - 1])) return null; // snake_case
  for (let k = from + 1; k <= text.length - marker.length; k++) {
    if (text.startsWith(marker, k) && !/\s/.test(text[k - 1]) && !(marker.length === 1 && text[k + 1] === marker)) {
      if (marker[0] === "_" && /\w/.test(text[k + marker.length] ?? "")) continue;
      return { inner: text.slice(from, k), next: k + marker.length, open: false };
    }
  }
  if (partial && !text.slice(from).includes("\n")) return { inner: text.slice(from), next: text.length, open: true };
  return null;
}

const INLINE_TAGS = { strong: "strong", em: "em", code: "code" };

/**
 * Render `text` as Markdown into `container`, replacing what it held. DOM nodes only: the text
 * never reaches innerHTML.
 * @param {any} container  an element
 * @param {string} text
 * @param {{partial?: boolean, document?: any}} [options]
 */
export function renderMarkdown(container, text, options = {}) {
  const doc = options.document ?? container.ownerDocument ?? /** @type {any} */ (globalThis).document;
  const nodes = parseMarkdown(text, options).map((b) => blockNode(doc, b));
  container.replaceChildren(...nodes);
}

/** @param {any} doc @param {Block} b @returns {any} */
function blockNode(doc, b) {
  switch (b.type) {
    case "paragraph":
      return withChildren(doc.createElement("p"), doc, b.children);
    case "heading":
      return withChildren(doc.createElement(`h${Math.min(b.level + 2, 6)}`), doc, b.children); // below the page's own h1
    case "codeblock": {
      const pre = doc.createElement("pre");
      const code = doc.createElement("code");
      if (b.lang) code.setAttribute("data-lang", b.lang);
      code.append(doc.createTextNode(b.text));
      pre.append(code);
      return pre;
    }
    case "blockquote": {
      const q = doc.createElement("blockquote");
      for (const child of b.children) q.append(blockNode(doc, child));
      return q;
    }
    case "list": {
      const list = doc.createElement(b.ordered ? "ol" : "ul");
      if (b.ordered && b.start !== 1) list.setAttribute("start", String(b.start));
      for (const item of b.items) list.append(withChildren(doc.createElement("li"), doc, item));
      return list;
    }
    case "rule":
      return doc.createElement("hr");
  }
  return doc.createTextNode("");
}

/** @param {any} el @param {any} doc @param {Inline[]} inlines */
function withChildren(el, doc, inlines) {
  for (const n of inlines) el.append(inlineNode(doc, n));
  return el;
}

/** @param {any} doc @param {Inline} n @returns {any} */
function inlineNode(doc, n) {
  switch (n.type) {
    case "text":
      return doc.createTextNode(n.text);
    case "break":
      return doc.createElement("br");
    case "code": {
      const el = doc.createElement(INLINE_TAGS.code);
      el.append(doc.createTextNode(n.text));
      return el;
    }
    case "strong":
    case "em":
      return withChildren(doc.createElement(INLINE_TAGS[n.type]), doc, n.children);
    case "link": {
      const a = withChildren(doc.createElement("a"), doc, n.children);
      a.setAttribute("href", n.href);
      a.setAttribute("rel", "noopener noreferrer nofollow");
      a.setAttribute("target", "_blank");
      return a;
    }
  }
  return doc.createTextNode("");
}
