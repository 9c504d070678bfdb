// On every page: the theme toggle, and times shown in the reader's own time zone.

export function currentTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen) return chosen;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  try { localStorage.setItem("theme", theme); } catch (error) { /* not kept: fine */ }
  // The code highlighting style follows the page's theme, not only the system's.
  const light = document.getElementById("hljs-light");
  const dark = document.getElementById("hljs-dark");
  if (light && dark) {
    light.media = theme === "light" ? "all" : "not all";
    dark.media = theme === "dark" ? "all" : "not all";
  }
}

const toggle = document.getElementById("theme-toggle");
if (toggle) {
  if (document.documentElement.dataset.theme) applyTheme(document.documentElement.dataset.theme);
  toggle.addEventListener("click", () => applyTheme(currentTheme() === "dark" ? "light" : "dark"));
}

// <time datetime="…" data-local> → "14:05" (today) or "4 Dec, 14:05", in the reader's zone.
export function localTime(iso) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return "";
  const time = at.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  const sameDay = at.toDateString() === new Date().toDateString();
  return sameDay ? time : at.toLocaleDateString([], {day: "numeric", month: "short"}) + ", " + time;
}

for (const element of document.querySelectorAll("time[data-local]")) {
  element.textContent = localTime(element.getAttribute("datetime"));
}
