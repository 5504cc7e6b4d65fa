// Small behaviours htmx does not cover. Loaded as a file so the CSP needs no inline script.
"use strict";

document.addEventListener("keydown", (event) => {
  const box = event.target;
  if (box.name === "message" && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    box.form.requestSubmit();
  }
});

document.body.addEventListener("htmx:wsAfterSend", (event) => {
  if (event.target.id === "composer") event.target.reset();
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
