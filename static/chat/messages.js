// The conversation on screen: the shown branch, each message with its alternatives ‹ 2 / 3 ›
// and its actions (copy, regenerate, edit, continue, feedback), the answer being written, and
// scrolling that follows the stream until the reader scrolls up.

import {StreamingView, copyText, renderInto} from "./render.js";

const NOTES = {
  stopped: "Stopped.",
  length: "Cut off at your plan's answer length.",
  failed: "This answer failed.",
};

export class MessageList {
  constructor(element, jumpButton, actions) {
    this.element = element;
    this.jump = jumpButton;
    this.actions = actions;  // {select(id), regenerate(id), edit(id, text), continue(id), feedback(id, rating, comment)}
    this.branch = [];
    this.streaming = null;  // {id, view}
    this.follow = true;
    this.busy = false;
    element.addEventListener("scroll", () => {
      this.follow = element.scrollHeight - element.scrollTop - element.clientHeight < 80;
      this.jump.hidden = this.follow;
    });
    jumpButton.addEventListener("click", () => { this.follow = true; this.scrollToEnd(); });
  }

  render(branch) {
    this.branch = branch;
    this.element.textContent = "";
    this.streaming = null;
    if (!branch.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "Ask anything. Answers stream in as the model writes them.";
      this.element.append(empty);
    }
    for (const message of branch) this.element.append(this.article(message));
    this.follow = true;
    this.scrollToEnd();
  }

  setBusy(busy) {
    this.busy = busy;
    this.element.setAttribute("aria-busy", busy ? "true" : "false");
    for (const button of this.element.querySelectorAll("button[data-needs-idle]")) button.disabled = busy;
  }

  // The answer `id` is being written: show its text so far and what comes.
  stream(id, text) {
    const article = this.element.querySelector(`article[data-id="${id}"]`);
    if (!article) return;
    article.classList.add("streaming");
    const content = article.querySelector(".content");
    this.streaming = {id, view: new StreamingView(content)};
    this.streaming.view.update(text);
    this.scrollIfFollowing();
  }

  update(id, text) {
    if (this.streaming && this.streaming.id === id) {
      if (text) this.element.querySelector(`article[data-id="${id}"] .note.waiting`)?.remove();
      this.streaming.view.update(text);
      this.scrollIfFollowing();
    }
  }

  // The answer ended: its final state replaces what streamed.
  finish(message) {
    const index = this.branch.findIndex((m) => m.id === message.id);
    if (index === -1) return;
    this.branch[index] = {...this.branch[index], ...message};
    const old = this.element.querySelector(`article[data-id="${message.id}"]`);
    if (old) old.replaceWith(this.article(this.branch[index]));
    this.streaming = null;
    this.scrollIfFollowing();
  }

  scrollIfFollowing() {
    if (this.follow) this.scrollToEnd();
    else this.jump.hidden = false;
  }

  scrollToEnd() {
    this.element.scrollTop = this.element.scrollHeight;
    this.jump.hidden = true;
  }

  article(message) {
    const article = document.createElement("article");
    article.className = `message ${message.role} status-${message.status}`;
    article.dataset.id = message.id;
    const role = document.createElement("h2");
    role.className = "role";
    role.textContent = message.role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "content";
    if (message.role === "assistant") renderInto(content, message.content);
    else content.textContent = message.content;
    article.append(role, content);
    const note = this.note(message);
    if (note) article.append(note);
    article.append(this.toolbar(message));
    return article;
  }

  note(message) {
    let text = null;
    if (message.status === "failed") text = message.error || NOTES.failed;
    else if (message.status === "stopped") text = NOTES.stopped;
    else if (message.status === "done" && message.finish_reason === "length") text = NOTES.length;
    // Queued, or taken by a worker whose model is still loading: the same wait to the reader.
    const waiting = message.role === "assistant" && !message.content
      && (message.status === "pending" || message.status === "streaming");
    if (waiting) text = "Waiting for the model…";
    if (!text) return null;
    const note = document.createElement("p");
    note.className = waiting ? "note waiting" : "note";
    note.textContent = text;
    return note;
  }

  toolbar(message) {
    const bar = document.createElement("div");
    bar.className = "toolbar";
    const siblings = message.siblings || [message.id];
    if (siblings.length > 1) {
      const position = siblings.indexOf(message.id);
      const previous = this.button("‹", `Previous version (${position} of ${siblings.length})`,
        () => this.actions.select(siblings[position - 1]), true);
      previous.disabled = position === 0 || this.busy;
      const label = document.createElement("span");
      label.className = "version";
      label.textContent = `${position + 1} / ${siblings.length}`;
      const next = this.button("›", `Next version (${position + 2} of ${siblings.length})`,
        () => this.actions.select(siblings[position + 1]), true);
      next.disabled = position === siblings.length - 1 || this.busy;
      bar.append(previous, label, next);
    }
    if (message.role === "user") {
      bar.append(this.button("Edit", "Edit and resend this message", () => this.editor(message), true));
      return bar;
    }
    if (message.status === "pending" || message.status === "streaming") return bar;
    bar.append(this.button("Copy", "Copy the answer", (event) => copyText(message.content, event.target)));
    bar.append(this.button("Regenerate", "Write another answer", () => this.actions.regenerate(message.id), true));
    const last = this.branch.length && this.branch[this.branch.length - 1].id === message.id;
    if (last && message.status === "done" && message.finish_reason === "length") {
      bar.append(this.button("Continue", "Continue the answer", () => this.actions.continue(message.id), true));
    }
    bar.append(this.feedback(message));
    return bar;
  }

  button(text, label, onClick, needsIdle = false) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tool";
    button.textContent = text;
    button.setAttribute("aria-label", label);
    button.title = label;
    if (needsIdle) {
      button.dataset.needsIdle = "1";
      button.disabled = this.busy;
    }
    button.addEventListener("click", onClick);
    return button;
  }

  feedback(message) {
    const box = document.createElement("span");
    box.className = "feedback";
    for (const [rating, text, label] of [[1, "▲", "Good answer"], [-1, "▼", "Bad answer"]]) {
      const button = this.button(text, label, () => this.rate(message, rating, box));
      button.setAttribute("aria-pressed", message.rating === rating ? "true" : "false");
      button.dataset.rating = rating;
      box.append(button);
    }
    return box;
  }

  rate(message, rating, box) {
    const taken = message.rating === rating;
    message.rating = taken ? 0 : rating;
    for (const button of box.querySelectorAll("button[data-rating]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.rating) === message.rating));
    }
    box.querySelector("form")?.remove();
    this.actions.feedback(message.id, message.rating, "");
    if (taken) return;
    const form = document.createElement("form");
    form.className = "feedback-comment";
    const input = document.createElement("input");
    input.placeholder = "Tell us more (optional)";
    input.setAttribute("aria-label", "Feedback comment");
    const send = document.createElement("button");
    send.type = "submit";
    send.textContent = "Send";
    form.append(input, send);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.actions.feedback(message.id, message.rating, input.value);
      form.replaceWith(Object.assign(document.createElement("span"), {className: "thanks", textContent: "Thanks!"}));
    });
    box.append(form);
    input.focus();
  }

  editor(message) {
    const article = this.element.querySelector(`article[data-id="${message.id}"]`);
    const content = article.querySelector(".content");
    const form = document.createElement("form");
    form.className = "edit";
    const area = document.createElement("textarea");
    area.value = message.content;
    area.setAttribute("aria-label", "Edit your message");
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Send";
    const cancel = this.button("Cancel", "Cancel the edit", () => form.replaceWith(content));
    form.append(area, save, cancel);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (area.value.trim()) this.actions.edit(message.id, area.value.trim());
    });
    form.addEventListener("keydown", (event) => { if (event.key === "Escape") form.replaceWith(content); });
    content.replaceWith(form);
    area.focus();
  }
}
