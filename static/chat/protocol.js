// The chat socket: frame names, a connection that comes back by itself, and the offsets that
// let a reply resume without a character lost or doubled. docs/protocol.md describes the frames.

export const SEND = "send";
export const EDIT = "edit";
export const REGENERATE = "regenerate";
export const CONTINUE = "continue";
export const STOP = "stop";
export const WATCH = "watch";

const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 10000;
const STALL_MS = 20000;  // following a reply and nothing heard for this long: reconnect

// A WebSocket to /ws/chat/ that reconnects with backoff (and at once when the tab comes back
// or the network does), queues what is sent while it is down, and notices a stalled stream.
export class ChatSocket {
  constructor({onFrame, onOnline, onOffline, onSessionEnded}) {
    this.onFrame = onFrame;
    this.onOnline = onOnline;
    this.onOffline = onOffline;
    this.onSessionEnded = onSessionEnded;
    this.queue = [];
    this.delay = RECONNECT_FIRST_MS;
    this.socket = null;
    this.timer = null;
    this.lastHeard = Date.now();
    this.following = () => false;  // set by the page: whether a reply is being followed
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.reconnectNow(); });
    window.addEventListener("online", () => this.reconnectNow());
    setInterval(() => this.checkStall(), 5000);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws/chat/");
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.delay = RECONNECT_FIRST_MS;
      this.lastHeard = Date.now();
      this.onOnline();
      for (const frame of this.queue.splice(0)) socket.send(JSON.stringify(frame));
    });
    socket.addEventListener("message", (event) => {
      this.lastHeard = Date.now();
      this.onFrame(JSON.parse(event.data));
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;  // replaced already
      this.socket = null;
      if (event.code === 4401) { this.onSessionEnded(); return; }
      this.onOffline();
      this.timer = setTimeout(() => this.connect(), this.delay * (0.75 + Math.random() / 2));
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
    });
  }

  get open() { return Boolean(this.socket && this.socket.readyState === WebSocket.OPEN); }

  // Sent now, or as soon as the socket is back (a `watch` is never queued: each opening sends its own).
  send(frame) {
    if (this.open) this.socket.send(JSON.stringify(frame));
    else if (frame.type !== WATCH) this.queue.push(frame);
  }

  reconnectNow() {
    if (this.socket) return;
    clearTimeout(this.timer);
    this.delay = RECONNECT_FIRST_MS;
    this.connect();
  }

  checkStall() {
    if (this.open && this.following() && Date.now() - this.lastHeard > STALL_MS) this.socket.close();
  }
}

// The text of one reply as this page has it. Frames say where their text begins (`offset`):
// text the page already has is skipped, and a frame past the end (one was missed) asks for a
// resume instead of leaving a hole.
export class ReplyText {
  constructor(id, text) {
    this.id = id;
    this.text = text || "";
  }

  // Returns "ok", or "gap" when the frame starts past what the page has.
  apply(frame) {
    const offset = typeof frame.offset === "number" ? frame.offset : this.text.length;
    if (offset > this.text.length) return "gap";
    const fresh = frame.text.slice(this.text.length - offset);
    if (fresh) this.text += fresh;
    return "ok";
  }
}
