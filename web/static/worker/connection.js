// The volunteer's WebSocket: binary frames, and reconnection with exponential
// backoff plus jitter so a restarted server is not stampeded by every tab at once.

// Close codes after which trying again cannot help (the server said no for good):
// protocol error, unsupported data, policy (bad origin, version mismatch).
const FATAL = new Set([1002, 1003, 1008]);

export class Connection {
  constructor(url, { onOpen, onFrame, onClose, onRetry, onFatal }) {
    this.url = url;
    this.handlers = { onOpen, onFrame, onClose, onRetry, onFatal };
    this.socket = null;
    this.delay = 0.5;
    this.stopped = false;
    this.timer = null;
  }

  open() {
    if (this.stopped) return;
    const socket = new WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.delay = 0.5;
      this.handlers.onOpen(socket);
    };
    socket.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) this.handlers.onFrame(socket, event.data);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.handlers.onClose(event);
      if (this.stopped) return;
      if (FATAL.has(event.code)) {
        this.stopped = true;
        this.handlers.onFatal(event.reason || `closed with code ${event.code}`);
        return;
      }
      // Random in [0.5, 1.5) x delay; the delay doubles up to 30 s while failures repeat.
      const wait = this.delay * (0.5 + Math.random());
      this.delay = Math.min(this.delay * 2, 30);
      this.handlers.onRetry(wait, opened);
      this.timer = setTimeout(() => this.open(), wait * 1000);
    };
  }

  // Only the socket a frame came from may carry the answer: a frame computed for
  // one connection is never sent on the next (its round may be gone).
  send(socket, frame) {
    if (socket && socket === this.socket && socket.readyState === WebSocket.OPEN) {
      socket.send(frame);
      return true;
    }
    return false;
  }

  // The server asked us to come back later (pace steering): not a failure, so the
  // backoff is untouched and the close of this socket is not reported as a drop.
  away(seconds) {
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000, "asked to come back later");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), seconds * 1000);
  }

  close(code = 1000, reason = "volunteer left") {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(code, reason);
  }
}
