// The chat page's plain requests (not live): JSON with the CSRF token Django wants.

function csrfToken() {
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken()},
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || "The server could not do that. Please try again.");
  return data;
}

export async function getJson(url) {
  const response = await fetch(url, {credentials: "same-origin"});
  if (!response.ok) throw new Error("The server could not answer. Please try again.");
  return response.json();
}
