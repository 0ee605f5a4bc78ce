// The HTTP API as the page uses it: KServe V1 JSON over fetch, and Explain's server-sent
// events read from a fetch body (EventSource cannot POST), so that aborting the fetch closes
// the connection, which makes the server cancel the work.

/** A failed call: the server's JSON `error` (and `field`) when it sent one. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = "", field = "" } = {}) {
    super(field ? `${message} (at ${field})` : message);
    this.status = status;
    this.code = code;
  }
}

const TOKEN_KEY = "integrad.token";

/** The bearer token for servers started with --auth-token (kept for this tab only). */
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** The ApiError of a non-2xx answer, from its JSON body when it has one. */
async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      return new ApiError(body.error, { status: response.status, code: body.code, field: body.field });
    }
  } catch (_) {
    // Not JSON: say what came instead.
  }
  return new ApiError(`HTTP ${response.status}: ${text.slice(0, 200) || response.statusText}`, {
    status: response.status,
  });
}

export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJson(path, body, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const listModels = () => getJson("v1/models");
export const listSamples = () => getJson("ui/samples");
export const exampleRows = (model) => getJson(`ui/examples/${encodeURIComponent(model)}`);

/** Predict's first answer for one instance. */
export async function predict(model, instance, topK, signal) {
  const body = { instances: [instance], parameters: { top_k: topK } };
  const answer = await postJson(`v1/models/${encodeURIComponent(model)}:predict`, body, signal);
  return answer.predictions[0];
}

/**
 * Explains one instance, calling `onProgress(progress)` for each progress event; resolves
 * with the explanation. Aborting `signal` rejects with an AbortError and ends the request.
 */
export async function explain(model, instance, parameters, { signal, onProgress }) {
  const response = await fetch(`v1/models/${encodeURIComponent(model)}:explain`, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ instances: [instance], parameters }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  let explanation = null;
  for await (const { event, data } of serverSentEvents(response.body)) {
    const payload = data ? JSON.parse(data) : {};
    if (event === "progress") onProgress(payload);
    else if (event === "explanation") explanation = payload;
    else if (event === "error") throw new ApiError(payload.error, payload);
    else if (event === "done") break;
  }
  if (!explanation) throw new ApiError("the stream ended without an explanation");
  return explanation;
}

/** The events of a text/event-stream body: `{event, data}` each (comments skipped). */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}
