// Where the reader writes: Enter sends, Shift+Enter is a new line, Escape stops the answer
// being written; a character counter near the plan's limit; Send becomes Stop while an
// answer is written.

export class Composer {
  constructor({form, input, send, stop, counter, maxChars, onSend, onStop}) {
    Object.assign(this, {form, input, send, stop, counter, maxChars, onSend, onStop});
    this.busy = false;
    form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    input.addEventListener("input", () => this.count());
    stop.addEventListener("click", () => onStop());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.busy && !event.defaultPrevented) onStop();
    });
  }

  submit() {
    const content = this.input.value.trim();
    if (!content || this.busy) return;
    if (this.maxChars && content.length > this.maxChars) return;
    if (this.onSend(content) !== false) {
      this.input.value = "";
      this.count();
    }
  }

  // The counter shows from 80 % of the limit on, and says when the message is too long.
  count() {
    const length = this.input.value.trim().length;
    const near = this.maxChars && length >= this.maxChars * 0.8;
    this.counter.hidden = !near;
    if (!near) return;
    this.counter.textContent = `${length.toLocaleString()} / ${this.maxChars.toLocaleString()}`;
    const over = length > this.maxChars;
    this.counter.classList.toggle("over", over);
    this.send.disabled = over;
    this.send.title = over ? "The message is longer than your plan allows." : "";
  }

  setBusy(busy) {
    this.busy = busy;
    this.send.hidden = busy;
    this.stop.hidden = !busy;
    if (!busy) this.count();
  }
}
