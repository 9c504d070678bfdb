// Before the page paints: the theme the reader chose on this device (light, dark), or the
// system's. A classic script in <head> so no flash of the other theme; no inline script (CSP).
(function () {
  "use strict";
  var chosen = null;
  try { chosen = localStorage.getItem("theme"); } catch (error) { /* storage blocked: follow the system */ }
  if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
})();
