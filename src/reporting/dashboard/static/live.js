// Live updates: Server-Sent Events read with fetch() and a stream reader, because EventSource
// cannot send the Authorization header and the token must never appear in a URL.

import { ApiError, enc, getToken, reportUnauthorized } from './api.js';

const KEEPALIVE = new Set(['ping', 'heartbeat', 'keepalive', 'hello', 'open']);
const MAX_RETRY_MS = 30_000;

/** Feed text chunks in; get back {type, data, id} events as the SSE spec dispatches them. */
export class SseParser {
  constructor() {
    this.lastEventId = '';
    this.retry = null;
    this.newConnection();
  }

  /** Forget a block cut short by a dropped connection; keep the last event id and retry. */
  newConnection() {
    this.buffer = '';
    this.endedWithCR = false;
    this.reset();
  }

  reset() {
    this.type = '';
    this.data = [];
    this.id = null;
  }

  push(chunk) {
    // A \r\n split across two chunks is one line break, not two.
    if (this.endedWithCR && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.endedWithCR = chunk.endsWith('\r');
    this.buffer += chunk;
    const events = [];
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        // The id counts once its block is whole: a block cut short told nothing.
        if (this.id !== null) this.lastEventId = this.id;
        if (this.data.length) {
          events.push({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId });
        }
        this.reset();
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.type = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\0')) this.id = value;
      else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
    }
    return events;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follow /stats/groups/{id}/events until stop() is called. `onChange(event)` runs for every
 * event that says the numbers changed; `onState(on)` tells whether the stream is connected.
 * A 404/403 means live updates are off here: it stops quietly. A 401 signs out, like any other.
 */
export function followGroup(groupId, { onChange, onState }) {
  const controller = new AbortController();
  const { signal } = controller;
  const parser = new SseParser();

  (async () => {
    let delay = 1000;
    while (!signal.aborted) {
      try {
        parser.newConnection();
        const headers = { Authorization: `Bearer ${getToken()}`, Accept: 'text/event-stream' };
        if (parser.lastEventId) headers['Last-Event-ID'] = parser.lastEventId;
        const response = await fetch(`/stats/groups/${enc(groupId)}/events`, {
          headers,
          signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        if (response.status === 401) {
          reportUnauthorized(new ApiError(401, ''));
          return;
        }
        if ([403, 404, 405, 501].includes(response.status)) return;
        if (response.ok && response.body) {
          onState(true);
          delay = 1000;
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            for (const event of parser.push(value)) {
              if (!KEEPALIVE.has(event.type)) onChange(event);
            }
          }
        }
      } catch (error) {
        if (signal.aborted) return;
      } finally {
        if (!signal.aborted) onState(false);
      }
      await sleep(parser.retry ?? delay, signal);
      delay = Math.min(MAX_RETRY_MS, delay * 2);
    }
  })();

  return () => controller.abort();
}
