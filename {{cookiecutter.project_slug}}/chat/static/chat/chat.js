// Small behaviours htmx does not cover. Loaded as a file so the CSP needs no inline script.
"use strict";

document.addEventListener("keydown", (event) => {
  const box = event.target;
  if (box.name === "message" && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    box.form.requestSubmit();
  }
});

// Typed text is never lost: the composer keeps a message until the server accepts the
// turn (oob/turn.html marks #composer-status "accepted"); a refusal (oob/error.html)
// shows next to it and leaves the text in place. Offline, htmx holds the message until
// the socket is back; the composer keeps it meanwhile and says so.
let pending = null; // the text of the message sent (or held), until accepted or refused
let held = false;

function composerBox() {
  return document.querySelector("#composer textarea");
}

function showStatus(text, state) {
  const status = document.getElementById("composer-status");
  if (!status) return;
  const warning = state === "refused" || state === "held";
  status.textContent = text;
  status.className = warning ? "composer-status error" : "composer-status";
  status.setAttribute("role", warning ? "alert" : "status");
  status.dataset.state = state;
}

const OFFLINE = "You are offline. Your message is kept here and goes out when the connection is back.";
const STILL_OFFLINE = "Still offline: your earlier message goes out first when the connection is back.";

document.addEventListener("submit", (event) => {
  if (event.target.id !== "composer") return;
  if (document.body.dataset.connection !== "open" && held) {
    // One held message at a time: the composer still has this one.
    event.preventDefault();
    event.stopImmediatePropagation();
    showStatus(STILL_OFFLINE, "held");
    return;
  }
  pending = composerBox().value;
  if (document.body.dataset.connection !== "open") {
    held = true;
    showStatus(OFFLINE, "held");
  }
}, true); // before htmx's own listener

document.body.addEventListener("htmx:wsAfterSend", (event) => {
  if (event.target.id !== "composer") return;
  held = false;
  showStatus("", "sent");
  composerBox().focus();
});

document.body.addEventListener("htmx:wsAfterMessage", () => {
  const status = document.getElementById("composer-status");
  if (!status) return;
  if (status.dataset.state === "accepted") {
    const box = composerBox();
    if (box && pending !== null && box.value === pending) box.value = "";
    pending = null;
  } else if (status.dataset.state === "refused") {
    pending = null;
  }
  status.dataset.state = "seen";
});

// One sidebar entry per conversation: a title sent over the socket (oob/title.html) puts
// the entry at the top; an older copy of it (renamed over HTTP meanwhile) goes.
document.body.addEventListener("htmx:wsAfterMessage", () => {
  const seen = new Set();
  for (const entry of document.querySelectorAll("#conversations > li[id]")) {
    if (seen.has(entry.id)) entry.remove();
    else seen.add(entry.id);
  }
});

// Follow the reply as it grows, unless the reader has scrolled up.
let following = true;
document.addEventListener("scroll", (event) => {
  const list = event.target;
  if (list.id === "messages") {
    following = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }
}, true);
document.body.addEventListener("htmx:wsAfterMessage", () => {
  const list = document.getElementById("messages");
  if (list && following) list.scrollTop = list.scrollHeight;
});

// After the server went away, try again soon once it is back. htmx's default backoff
// doubles up to 64 s between attempts, so a page could sit "reconnecting" for a minute
// after a restart; keep the jitter (pages do not all come back at once), cap it at 5 s.
htmx.config.wsReconnectDelay = (retryCount) => {
  const ceiling = Math.min(1000 * 2 ** retryCount, 5000);
  return ceiling / 2 + (Math.random() * ceiling) / 2;
};

// The connection's state shows as "Reconnecting…", then "Connected again." (chat.css): one
// notice per outage however many attempts it takes. A reconnect catches up.
document.body.addEventListener("htmx:wsOpen", () => {
  const reconnected = document.body.dataset.connection === "closed";
  document.body.dataset.connection = reconnected ? "back" : "open";
  if (reconnected) catchUp();
});
document.body.addEventListener("htmx:wsClose", () => { document.body.dataset.connection = "closed"; });

// A reply that shows no progress for a while may have ended unheard: its end was sent while
// the channel layer was down, or its server stopped. Check it against the server, as after a
// reconnect; the server answers with what it stored.
const STALE_AFTER_MS = 5000;
let lastProgress = Date.now();
const messageList = document.getElementById("messages");
if (messageList) {
  new MutationObserver(() => { lastProgress = Date.now(); })
    .observe(messageList, { childList: true, subtree: true, characterData: true });
  setInterval(() => {
    const waiting = document.querySelector("#messages article.message.streaming");
    if (waiting && document.body.dataset.connection !== "closed"
        && Date.now() - lastProgress > STALE_AFTER_MS) {
      lastProgress = Date.now();
      catchUp();
    }
  }, 1000);
}

// A reply that was streaming when the connection dropped may have ended meanwhile (a
// server restart stops it) without the page hearing of it: show such replies as stored.
async function catchUp() {
  const stale = [...document.querySelectorAll("#messages article.message.streaming")];
  if (!stale.length) return;
  let stored;
  try {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    stored = new DOMParser().parseFromString(await response.text(), "text/html");
  } catch {
    return; // offline again: the next reconnect tries again
  }
  for (const article of stale) {
    const latest = stored.getElementById(article.id);
    // Skip what changed live meanwhile, and what is still being written (another process).
    if (!article.classList.contains("streaming") || !latest) continue;
    if (latest.classList.contains("streaming")) continue;
    const fresh = document.importNode(latest, true);
    article.replaceWith(fresh);
    htmx.process(fresh); // its Retry form sends over the socket
  }
  const stop = document.getElementById("stop-form");
  if (stop && !document.querySelector("#messages article.message.streaming")) stop.hidden = true;
}

window.addEventListener("load", () => {
  const list = document.getElementById("messages");
  if (list) list.scrollTop = list.scrollHeight;
});

// An example prompt of the empty state fills the composer, ready to edit or send.
document.addEventListener("click", (event) => {
  const example = event.target.closest("button.example");
  if (!example) return;
  const box = composerBox();
  box.value = example.dataset.prompt;
  box.focus();
});

// Copy buttons of code blocks (rendered by chat/markdown.py).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy-code");
  if (!button) return;
  const code = button.closest(".code-block").querySelector("code").textContent;
  try {
    await navigator.clipboard.writeText(code);
  } catch {
    return; // no clipboard access (an insecure origin, or denied): nothing to confirm
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});

// The sidebar is a drawer on narrow screens (chat.css): the header's menu button opens it.
function setDrawer(open) {
  document.body.dataset.drawer = open ? "open" : "closed";
  const opener = document.querySelector("[data-drawer-open]");
  if (opener) opener.setAttribute("aria-expanded", String(open));
  if (open) document.querySelector("#sidebar .new-chat")?.focus();
  else if (opener && document.activeElement?.closest("#sidebar")) opener.focus();
}
document.addEventListener("click", (event) => {
  if (event.target.closest("[data-drawer-open]")) setDrawer(true);
  else if (event.target.closest("[data-drawer-close]")) setDrawer(false);
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const renaming = event.target.closest?.(".rename-form");
  if (renaming) renaming.querySelector(".cancel").click();
  else if (document.body.dataset.drawer === "open") setDrawer(false);
});

// Light or dark: the system's choice until the reader picks one with the toggle (theme.js
// applies a stored choice before the first paint).
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
function effectiveTheme() {
  return document.documentElement.dataset.theme || (systemDark.matches ? "dark" : "light");
}
function showTheme() {
  const toggle = document.querySelector("[data-theme-toggle]");
  if (toggle) toggle.setAttribute("aria-pressed", String(effectiveTheme() === "dark"));
}
document.addEventListener("click", (event) => {
  if (!event.target.closest("[data-theme-toggle]")) return;
  const theme = effectiveTheme() === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = theme;
  try {
    localStorage.setItem("theme", theme);
  } catch {
    // storage blocked: the choice lasts for this page only
  }
  showTheme();
});
systemDark.addEventListener("change", showTheme);
showTheme();
