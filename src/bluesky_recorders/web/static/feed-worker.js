/* The page's WebSocket, in a dedicated worker.
 *
 * The page's own thread is busy for tens of milliseconds whenever Plotly redraws; a
 * WebSocket there would take its messages only afterwards. Here each message is stamped
 * with the time it arrived (for window.bsrecFeed.latencies) and handed to the page,
 * which takes it as soon as it is free.
 *
 * Orders from the page: {type: "connect", url} and {type: "close"}.
 * Reports to the page: {type: "open"}, {type: "message", text, arrived}, {type: "close"}.
 */
"use strict";

let socket = null;

self.onmessage = (event) => {
  const order = event.data || {};
  if (order.type === "connect") {
    try {
      socket = new WebSocket(order.url);
    } catch (err) {
      self.postMessage({ type: "close", code: 0 });
      return;
    }
    socket.onopen = () => self.postMessage({ type: "open" });
    socket.onclose = (e) => self.postMessage({ type: "close", code: e.code });
    socket.onmessage = (e) =>
      self.postMessage({
        type: "message",
        text: e.data,
        arrived: (performance.timeOrigin + performance.now()) / 1000,
      });
  } else if (order.type === "close" && socket) {
    socket.close();
  }
};
