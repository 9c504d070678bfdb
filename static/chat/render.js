// Markdown → sanitised HTML, code highlighted with a Copy button, rendered incrementally while
// an answer streams. Raw HTML in the text is shown as text (markdown-it with html off), and
// everything produced is sanitised again by DOMPurify, so neither a user nor the model can
// inject markup or script.

import DOMPurify from "../vendor/purify.es.mjs";
import hljs from "../vendor/highlight.min.js";

const markdown = window.markdownit({html: false, linkify: true, typographer: false});

// Links open in a new tab without handing it this page (rel=noopener noreferrer); DOMPurify
// has already dropped javascript: and other unsafe URLs.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.getAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function markdownToHtml(text) {
  return DOMPurify.sanitize(markdown.render(text), {ADD_ATTR: ["target"]});
}

// Code blocks get a header with the language and Copy, and their language's highlighting;
// one still `streaming` gets its header only, Copy disabled (the block is rendered again
// at every token, which would swallow a click).
export function decorateCode(container, {streaming = false} = {}) {
  for (const code of container.querySelectorAll("pre > code")) {
    if (code.dataset.decorated) continue;
    code.dataset.decorated = "1";
    const language = (code.className.match(/language-([\w+#-]+)/) || [])[1] || "";
    if (!streaming && language && hljs.getLanguage(language)) {
      code.innerHTML = hljs.highlight(code.textContent, {language}).value;  // hljs escapes the text
      code.classList.add("hljs");
    }
    const header = document.createElement("div");
    header.className = "code-header";
    const label = document.createElement("span");
    label.textContent = language || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    copy.disabled = streaming;
    copy.addEventListener("click", () => copyText(code.textContent, copy));
    header.append(label, copy);
    code.parentElement.before(header);
  }
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    flash(button, "Copied");
  } catch (error) {
    flash(button, "Copy failed");
  }
}

function flash(button, text) {
  const before = button.textContent;
  button.textContent = text;
  setTimeout(() => { button.textContent = before; }, 1500);
}

// The split between the part of a streaming answer whose markdown can no longer change (its
// blocks are finished: it ends at a blank line outside a code fence) and the tail still
// being written.
function stableLength(text) {
  let fenceOpen = false;
  let stable = 0;
  let position = 0;
  for (const line of text.split("\n")) {
    const end = position + line.length + 1;
    if (/^\s*(```|~~~)/.test(line)) fenceOpen = !fenceOpen;
    else if (!fenceOpen && line.trim() === "" && end <= text.length) stable = end;
    position = end;
  }
  return stable;
}

// Renders an answer as it streams: finished blocks once (appended, highlighted), the tail
// again at each update. At the end the whole answer is rendered once more, so markdown that
// spans blocks (a list with blank lines) comes out exactly as it would have all at once.
export class StreamingView {
  constructor(element) {
    this.element = element;
    this.element.textContent = "";
    this.stable = document.createElement("div");
    this.tail = document.createElement("div");
    this.element.append(this.stable, this.tail);
    this.stableText = "";
  }

  update(text) {
    const split = stableLength(text);
    if (split > this.stableText.length && text.startsWith(this.stableText)) {
      const block = document.createElement("div");
      block.innerHTML = markdownToHtml(text.slice(this.stableText.length, split));
      decorateCode(block);
      this.stable.append(...block.childNodes);
      this.stableText = text.slice(0, split);
    } else if (!text.startsWith(this.stableText)) {
      this.stable.textContent = "";  // the text went back (a takeover): start over
      this.stableText = "";
      return this.update(text);
    }
    this.tail.innerHTML = markdownToHtml(text.slice(this.stableText.length));
    // A code block still being written has its header already, so nothing moves when it
    // ends; it is highlighted, and its Copy enabled, then.
    decorateCode(this.tail, {streaming: true});
  }

  finish(text) {
    renderInto(this.element, text);
  }
}

export function renderInto(element, text) {
  element.innerHTML = markdownToHtml(text);
  decorateCode(element);
}
