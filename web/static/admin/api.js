// The admin JSON API with the page's session: the HttpOnly cookie goes by itself,
// and changes carry the session's CSRF token (from <meta name="csrf-token">).

const csrf = document.querySelector('meta[name="csrf-token"]').content;

export class SignedOut extends Error {}

export async function call(method, path, body) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) throw new SignedOut("signed out");
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}
