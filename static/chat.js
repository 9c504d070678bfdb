// The chat page: one WebSocket to /ws/chat/, frames as documented in the README.
(function () {
  "use strict";
  const chat = document.getElementById("chat");
  if (!chat) return;
  const messages = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("input");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const statusLine = document.getElementById("status");
  const maxChars = parseInt(chat.dataset.maxChars, 10) || 0;

  let conversationId = chat.dataset.conversation ? parseInt(chat.dataset.conversation, 10) : null;
  let socket = null;
  let queued = null;  // a send frame waiting for the socket to open
  let reconnectDelay = 500;
  let generating = null; // {id, contentEl} of the reply being streamed

  function setStatus(text) { statusLine.textContent = text || ""; }

  function setGenerating(value) {
    generating = value;
    sendButton.hidden = !!value;
    stopButton.hidden = !value;
  }

  function addMessage(role, text, id) {
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    const el = document.createElement("div");
    el.className = "message " + role;
    if (id) el.dataset.id = id;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text || "";
    el.append(who, content);
    messages.appendChild(el);
    el.scrollIntoView({block: "end"});
    return el;
  }

  function addNote(el, text) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = text;
    el.appendChild(note);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/chat/");
    socket.addEventListener("open", function () {
      reconnectDelay = 500;
      setStatus("");
      if (queued) { socket.send(queued); queued = null; }  // written before the socket was up
    });
    socket.addEventListener("message", function (event) { handle(JSON.parse(event.data)); });
    socket.addEventListener("close", function (event) {
      if (generating) {
        addNote(generating.el, "Connection lost; the answer so far is saved.");
        setGenerating(null);
      }
      if (event.code === 4401) { setStatus("Your session has ended. Please log in again."); return; }
      setStatus("Reconnecting…");
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 10000);
    });
  }

  // "17 of 20 messages left · next frees up at 14:05", in the reader's own time zone.
  const quotaLine = document.getElementById("quota");
  function showQuota(quota) {
    if (!quotaLine || !quota) return;
    let text = quota.remaining + " of " + quota.limit + " messages left";
    if (quota.resets_at) {
      const at = new Date(quota.resets_at);
      text += " · next frees up at " + at.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    }
    quotaLine.textContent = text;
  }
  if (quotaLine) {
    showQuota({remaining: quotaLine.dataset.remaining, limit: quotaLine.dataset.limit,
               resets_at: quotaLine.dataset.resetsAt || null});
  }

  function handle(frame) {
    switch (frame.type) {
      case "message.created": {
        showQuota(frame.quota);
        if (conversationId === null) {
          conversationId = frame.conversation.id;
          history.replaceState(null, "", "/chat/" + conversationId + "/");
          const item = document.createElement("li");
          item.className = "active";
          const link = document.createElement("a");
          link.href = "/chat/" + conversationId + "/";
          link.textContent = frame.conversation.title;
          item.appendChild(link);
          document.getElementById("conversations").prepend(item);
        }
        const last = messages.querySelector(".message.user.sending");
        if (last) { last.classList.remove("sending"); last.dataset.id = frame.user_message.id; }
        const el = addMessage("assistant", "", frame.message.id);
        el.classList.add("streaming");
        setGenerating({id: frame.message.id, el: el, content: el.querySelector(".content")});
        setStatus("");
        break;
      }
      case "token":
        if (generating && frame.message === generating.id) {
          generating.content.textContent += frame.text;
          generating.el.scrollIntoView({block: "end"});
        }
        break;
      case "done":
        if (generating && frame.message === generating.id) {
          generating.content.textContent = frame.content || generating.content.textContent;
          generating.el.classList.remove("streaming");
          generating.el.classList.add("status-" + frame.status);
          if (frame.status === "stopped") addNote(generating.el, "Stopped.");
          setGenerating(null);
        }
        break;
      case "error":
        if (generating && frame.message === generating.id) {
          generating.el.classList.remove("streaming");
          addNote(generating.el, frame.error);
          setGenerating(null);
        } else {
          const pending = messages.querySelector(".message.user.sending");
          if (pending) { input.value = pending.querySelector(".content").textContent; pending.remove(); }
          if (frame.quota) showQuota(frame.quota);
          setStatus(frame.error);
        }
        break;
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const content = input.value.trim();
    if (!content || generating) return;
    if (maxChars && content.length > maxChars) {
      setStatus("The message has " + content.length + " characters; your plan allows " + maxChars + ".");
      return;
    }
    if (queued) return;
    addMessage("user", content).classList.add("sending");
    const frame = JSON.stringify({type: "send", conversation: conversationId, content: content});
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(frame);
    else { queued = frame; setStatus("Connecting…"); }
    input.value = "";
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });

  stopButton.addEventListener("click", function () {
    if (socket && generating) socket.send(JSON.stringify({type: "stop"}));
  });

  connect();
})();
