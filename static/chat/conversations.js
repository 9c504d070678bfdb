// The conversation list (newest first, 50 at a time, searchable), the open conversation's bar
// (rename, export, delete after a confirm step), and the drawer it lives in on a phone.

import {getJson, postJson} from "./http.js";

export class Conversations {
  constructor({list, more, search, layout, menu, backdrop, bar, title, renameButton, deleteButton, onError}) {
    Object.assign(this, {list, more, search, layout, menu, backdrop, bar, title, renameButton, deleteButton, onError});
    this.next = null;
    this.query = "";
    this.current = null;
    let debounce = null;
    search.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => this.load(search.value.trim()), 250);
    });
    more.addEventListener("click", () => this.loadMore());
    menu.addEventListener("click", () => this.drawer(!layout.classList.contains("drawer-open")));
    backdrop.addEventListener("click", () => this.drawer(false));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && layout.classList.contains("drawer-open")) this.drawer(false);
    });
    renameButton.addEventListener("click", () => this.renaming());
    deleteButton.addEventListener("click", () => this.confirmDelete());
  }

  show(page, current) {
    this.current = current;
    this.list.textContent = "";
    this.append(page);
    this.showBar();
  }

  append(page) {
    for (const conversation of page.conversations) this.list.append(this.item(conversation));
    this.next = page.next;
    this.more.hidden = !page.next;
    if (!this.list.children.length) {
      const empty = Object.assign(document.createElement("li"), {className: "none"});
      empty.textContent = this.query ? "No conversation matches." : "No conversations yet.";
      this.list.append(empty);
    }
  }

  item(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    if (this.current && this.current.id === conversation.id) {
      item.className = "active";
      item.setAttribute("aria-current", "page");
    }
    const link = document.createElement("a");
    link.href = `/chat/${conversation.id}/`;
    link.textContent = conversation.title;
    item.append(link);
    return item;
  }

  async load(query) {
    this.query = query;
    try {
      const page = await getJson(`/chat/conversations/?q=${encodeURIComponent(query)}`);
      this.list.textContent = "";
      this.append(page);
    } catch (error) { this.onError(error.message); }
  }

  async loadMore() {
    if (!this.next) return;
    try {
      const page = await getJson(`/chat/conversations/?q=${encodeURIComponent(this.query)}&next=${encodeURIComponent(this.next)}`);
      this.append(page);
    } catch (error) { this.onError(error.message); }
  }

  // A new conversation or a new title: at the top of the list, and in the bar.
  upsert(conversation) {
    if (this.current && this.current.id === conversation.id) this.current = {...this.current, ...conversation};
    const existing = this.list.querySelector(`li[data-id="${conversation.id}"]`);
    if (existing) existing.querySelector("a").textContent = conversation.title;
    else {
      this.list.querySelector("li.none")?.remove();
      this.list.prepend(this.item(conversation));
    }
    this.showBar();
  }

  open(conversation) {
    this.current = conversation;
    this.upsert(conversation);
    for (const item of this.list.querySelectorAll("li")) {
      const active = Number(item.dataset.id) === conversation.id;
      item.classList.toggle("active", active);
      if (active) item.setAttribute("aria-current", "page"); else item.removeAttribute("aria-current");
    }
  }

  showBar() {
    this.bar.hidden = !this.current;
    if (!this.current) return;
    this.title.textContent = this.current.title;
    document.title = `${this.current.title} · chatsite`;
    document.getElementById("export-md").href = `/chat/${this.current.id}/export.md`;
    document.getElementById("export-json").href = `/chat/${this.current.id}/export.json`;
  }

  renaming() {
    const form = document.createElement("form");
    form.className = "rename";
    const input = Object.assign(document.createElement("input"), {value: this.current.title, maxLength: 200});
    input.setAttribute("aria-label", "New title");
    const save = Object.assign(document.createElement("button"), {type: "submit", textContent: "Save"});
    form.append(input, save);
    const done = () => form.replaceWith(this.title);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const renamed = await postJson(`/chat/${this.current.id}/rename/`, {title: input.value});
        this.upsert(renamed);
      } catch (error) { this.onError(error.message); }
      done();
    });
    input.addEventListener("keydown", (event) => { if (event.key === "Escape") done(); });
    this.title.replaceWith(form);
    input.select();
  }

  confirmDelete() {
    if (this.bar.querySelector(".confirm")) return;
    const confirm = document.createElement("div");
    confirm.className = "confirm";
    confirm.setAttribute("role", "alertdialog");
    confirm.setAttribute("aria-label", "Delete this conversation?");
    const text = Object.assign(document.createElement("span"), {textContent: "Delete this conversation for good?"});
    const yes = Object.assign(document.createElement("button"), {type: "button", className: "danger", textContent: "Delete for good"});
    const no = Object.assign(document.createElement("button"), {type: "button", className: "secondary", textContent: "Keep it"});
    no.addEventListener("click", () => confirm.remove());
    yes.addEventListener("click", async () => {
      try {
        await postJson(`/chat/${this.current.id}/delete/`);
        location.assign("/chat/");
      } catch (error) { this.onError(error.message); confirm.remove(); }
    });
    confirm.append(text, yes, no);
    this.bar.append(confirm);
    no.focus();
  }

  drawer(open) {
    this.layout.classList.toggle("drawer-open", open);
    this.menu.setAttribute("aria-expanded", String(open));
    this.backdrop.hidden = !open;
    if (open) this.search.focus();
  }
}
