// The reader's chosen theme ("light" or "dark", kept in localStorage) on <html data-theme>,
// before the page paints. Without a choice, chat.css follows prefers-color-scheme.
"use strict";
try {
  const theme = localStorage.getItem("theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {
  // storage blocked: follow the system
}
