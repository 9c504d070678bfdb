// The chat page: wires the socket, the conversation on screen, the list and the composer.
// State: the conversation shown, its branch, and the reply being followed (its text so far).

import {Composer} from "./composer.js";
import {Conversations} from "./conversations.js";
import {postJson} from "./http.js";
import {MessageList} from "./messages.js";
import {CONTINUE, ChatSocket, EDIT, REGENERATE, ReplyText, SEND, STOP, WATCH} from "./protocol.js";
import {showQuota} from "./quota.js";

const page = JSON.parse(document.getElementById("page-data").textContent);
const $ = (id) => document.getElementById(id);
const statusLine = $("status");
let conversation = page.conversation;
let following = null;  // ReplyText of the answer being written

function say(text) { statusLine.textContent = text || ""; }

const socket = new ChatSocket({
  onFrame: handle,
  onOnline: () => { $("offline-banner").hidden = true; say(""); watch(); },
  onOffline: () => { $("offline-banner").hidden = false; },
  onSessionEnded: () => say("Your session has ended. Please log in again."),
});
socket.following = () => following !== null;

const messages = new MessageList($("messages"), $("jump"), {
  select: (id) => showBranch(id),
  regenerate: (id) => start({type: REGENERATE, message: id}),
  edit: (id, content) => start({type: EDIT, message: id, content}),
  continue: (id) => start({type: CONTINUE, message: id}),
  feedback: (id, rating, comment) => postJson(`/chat/messages/${id}/feedback/`, {rating, comment}).catch((e) => say(e.message)),
});

const conversations = new Conversations({
  list: $("conversations"), more: $("more-conversations"), search: $("search"), layout: $("layout"),
  menu: $("menu-toggle"), backdrop: $("backdrop"), bar: $("conversation-bar"), title: $("title"),
  renameButton: $("rename"), deleteButton: $("delete"), onError: say,
});

const composer = new Composer({
  form: $("composer"), input: $("input"), send: $("send"), stop: $("stop"), counter: $("counter"),
  maxChars: page.plan.max_input_chars,
  onSend: (content) => start({type: SEND, conversation: conversation ? conversation.id : null, content}),
  onStop: () => { if (following) socket.send({type: STOP, message: following.id}); },
});

// Starting a reply (send, edit, regenerate, continue): refused while one is being written.
function start(frame) {
  if (following) { say("Wait for the answer to finish, or stop it."); return false; }
  if (!socket.open) say("Connecting… your message goes out as soon as the connection is back.");
  socket.send(frame);
  return true;
}

// On every (re)connection: follow the conversation, and the reply in progress from what this page has.
function watch() {
  if (!conversation) return;
  const frame = {type: WATCH, conversation: conversation.id};
  if (following) Object.assign(frame, {message: following.id, offset: following.text.length});
  socket.send(frame);
}

function follow(id, text) {
  following = new ReplyText(id, text);
  messages.stream(id, following.text);
  setBusy(true);
}

function setBusy(busy) {
  composer.setBusy(busy);
  messages.setBusy(busy);
}

function handle(frame) {
  switch (frame.type) {
    case "model":
      $("model-banner").hidden = frame.state !== "loading";
      break;
    case "message.created": {
      const isNew = !conversation || conversation.id !== frame.conversation.id;
      conversation = frame.conversation;
      if (isNew) {
        history.replaceState(null, "", `/chat/${conversation.id}/`);
        conversations.open(conversation);
      }
      if (frame.quota) showQuota(frame.quota, page.plan);
      messages.render(frame.branch);
      follow(frame.message.id, frame.message.content);
      say("");
      break;
    }
    case "token":
      $("model-banner").hidden = true;  // something answers, whatever the last "model" frame said
      if (following && frame.message === following.id) {
        if (following.apply(frame) === "gap") watch();  // a frame was missed: catch up from what we have
        else messages.update(following.id, following.text);
      }
      break;
    case "done":
      if (following && frame.message === following.id) {
        if (frame.status === "done" && following.text !== frame.content) {
          // The saved text wins; a difference means frames were lost or doubled on the way.
          assembly.mismatches += 1;
          console.warn("chatsite: the streamed text differed from the saved answer", frame.message);
        }
        assembly.checked += 1;
        messages.finish({id: frame.message, content: frame.content, status: frame.status,
          finish_reason: frame.finish_reason});
        ended();
      }
      break;
    case "error":
      if (following && frame.message === following.id) {
        messages.finish({id: frame.message, content: following.text, status: "failed", error: frame.error});
        ended();
      } else {
        say(frame.error);
        if (frame.quota) showQuota(frame.quota, page.plan);
      }
      break;
    case "conversation.updated":
      conversations.upsert({id: frame.conversation, title: frame.title});
      break;
  }
}

function ended() {
  following = null;
  setBusy(false);
}

async function showBranch(messageId) {
  try {
    const data = await postJson(`/chat/${conversation.id}/branch/`, {message: messageId});
    messages.render(data.branch);
  } catch (error) { say(error.message); }
}

// The page as the server rendered it: the branch, and a reply in progress to resume.
conversations.show(page.conversations, conversation);
messages.render(page.branch);
const last = page.branch[page.branch.length - 1];
if (last && last.role === "assistant" && (last.status === "pending" || last.status === "streaming")) {
  follow(last.id, last.content);
}
showQuota(page.quota, page.plan);
socket.connect();

// How many finished answers this page assembled from frames, and how many of those differed from
// the saved text (the browser tests read it; it should stay 0).
const assembly = {checked: 0, mismatches: 0};
window.chatsiteAssembly = assembly;
document.body.dataset.ready = "true";  // the page's handlers are in place
