// Markdown for streamed answers: the tree, its safety, and its stability while text streams.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseInline, parseMarkdown, renderMarkdown } from "../src/markdown.js";

/** A DOM just big enough to see what renderMarkdown builds (and that it never uses innerHTML). */
class FakeNode {
  constructor(tag, text = null) {
    this.tag = tag;
    this.text = text;
    this.children = [];
    this.attrs = {};
  }
  append(...nodes) { this.children.push(...nodes); }
  replaceChildren(...nodes) { this.children = nodes; }
  setAttribute(k, v) { this.attrs[k] = v; }
  set innerHTML(_) { throw new Error("innerHTML must never be used"); }
  get html() {
    if (this.tag === "#text") return this.text.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const attrs = Object.entries(this.attrs).map(([k, v]) => ` ${k}="${v}"`).join("");
    return `<${this.tag}${attrs}>${this.children.map((c) => c.html).join("")}</${this.tag}>`;
  }
}
const doc = {
  createElement: (tag) => new FakeNode(tag),
  createTextNode: (text) => new FakeNode("#text", text),
};

function html(text, partial = false) {
  const box = new FakeNode("div");
  renderMarkdown(box, text, { partial, document: doc });
  return box.children.map((c) => c.html).join("");
}

test("the common Markdown of answers", () => {
  assert.equal(html("Hello **bold** and *em*, `code` and [a link](https://example.org)."),
    '<p>Hello <strong>bold</strong> and <em>em</em>, <code>code</code> and <a href="https://example.org" rel="noopener noreferrer nofollow" target="_blank">a link</a>.</p>');
  assert.equal(html("# Title\n\nline one\nline two"), "<h3>Title</h3><p>line one<br></br>line two</p>");
  assert.equal(html("- a\n- b *c*\n\n1. one\n2. two"),
    "<ul><li>a</li><li>b <em>c</em></li></ul><ol><li>one</li><li>two</li></ol>");
  assert.equal(html("```python\nprint('<b>')\n```\nafter"),
    '<pre><code data-lang="python">print(\'&lt;b>\')</code></pre><p>after</p>');
  assert.equal(html("> quoted\n> more\n\n---"), "<blockquote><p>quoted<br></br>more</p></blockquote><hr></hr>");
  assert.equal(html("snake_case_name and 2 * 3 * 4"), "<p>snake_case_name and 2 * 3 * 4</p>");
});

test("HTML in an answer is text, never markup; only http(s) and mailto links", () => {
  assert.equal(html('<script>alert(1)</script><img src=x onerror="alert(2)">'),
    '<p>&lt;script>alert(1)&lt;/script>&lt;img src=x onerror="alert(2)"></p>');
  assert.equal(html("[click](javascript:alert(1)) [data](data:text/html,x) [rel](/admin)"),
    "<p>click data rel</p>");
  assert.equal(html("[mail](mailto:a@example.org)"),
    '<p><a href="mailto:a@example.org" rel="noopener noreferrer nofollow" target="_blank">mail</a></p>');
});

test("while streaming, an opened marker shows as what it will be, and stays so", () => {
  // The text the pacer reveals, piece by piece: the style of what is shown never flips back.
  const full = "Say **very loud** and `x = 1` now";
  const seen = [];
  for (let n = 1; n <= full.length; n++) seen.push(html(full.slice(0, n), n < full.length));
  assert.equal(seen.at(-1), "<p>Say <strong>very loud</strong> and <code>x = 1</code> now</p>");
  assert.equal(seen[full.indexOf("**") + 3], "<p>Say <strong>ve</strong></p>"); // "Say **ve"
  assert.ok(!seen.some((h) => h.includes("**")), "no stray markers while the bold is open");
  assert.equal(html("```js\nlet a", true), '<pre><code data-lang="js">let a</code></pre>');
  // Finished text keeps an unclosed marker as it is.
  assert.equal(html("a **b"), "<p>a **b</p>");
});

test("the tree is plain data (what the page renders from)", () => {
  assert.deepEqual(parseMarkdown("## Hi\n\n*x*"), [
    { type: "heading", level: 2, children: [{ type: "text", text: "Hi" }] },
    { type: "paragraph", children: [{ type: "em", children: [{ type: "text", text: "x" }] }] },
  ]);
  assert.deepEqual(parseInline("\\*not em\\*"), [{ type: "text", text: "*not em*" }]);
});
