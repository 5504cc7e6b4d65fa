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

document.body.addEventListener("htmx:wsOpen", () => { document.body.dataset.connection = "open"; });
document.body.addEventListener("htmx:wsClose", () => { document.body.dataset.connection = "closed"; });

window.addEventListener("load", () => {
  const list = document.getElementById("messages");
  if (list) list.scrollTop = list.scrollHeight;
});
