#!/usr/bin/env python3
"""The TEJ peer pair for `make bench`: tej-protoc 0.2.4 client -> tej-protoc 0.2.4 server.

Run with the interpreter of target/venv (where `make venv` installs tej-protoc):

  tej_py_pair.py serve --out DIR
      A `TPServer` on 127.0.0.1:0. Prints `listening tej 127.0.0.1:PORT` once bound. Its
      `received()` writes each file of a frame to DIR/<name> and answers with a status-0 frame
      whose message is `{"files":[{"name","size","sha256"}]}` (hash of the bytes received).
      Runs until SIGTERM.

  tej_py_pair.py send --addr HOST:PORT FILE
      Reads FILE, builds one status-0 frame with `BytesBuilder` (not timed), connects, then times
      from the first `sock.sendall` byte to the reply frame read by tej-protoc's `TPFrameReader`.
      Checks the reply's size and SHA-256 against the file's (hashed before the timer starts).
      Prints one JSON object: {"bytes", "seconds", "outcome": "confirmed"|"mismatch", "reply"}.

The package holds whole frames in memory (reader: one bytearray plus a bytes copy; builder: the
file, the growing frame and its bytes copy), so a 1 GiB file needs a few GiB on each side.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import time

from tej_protoc.callbacks import ResponseCallback
from tej_protoc.protocol import BytesBuilder, TPFrameReader, send
from tej_protoc.server import TPServer


def serve(out):
    os.makedirs(out, exist_ok=True)

    class Receiver(ResponseCallback):
        def received(self, files, message_data):
            entries = []
            for f in files:
                name = os.path.basename(f.name) or "unnamed"
                with open(os.path.join(out, name), "wb") as w:
                    w.write(f.data)
                entries.append({"name": f.name, "size": f.size,
                                "sha256": hashlib.sha256(f.data).hexdigest()})
            reply = json.dumps({"files": entries}, separators=(",", ":")).encode()
            send(self.client, BytesBuilder(0).set_message(reply).bytes())

    server = TPServer("127.0.0.1", 0, Receiver)
    host, port = server.__server__.getsockname()[:2]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"listening tej {host}:{port}", flush=True)
    server.listen()


def send_file(addr, path):
    host, port = addr.rsplit(":", 1)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    name = os.path.basename(path)
    frame = BytesBuilder(0).add_file(name, data).bytes()
    del data

    class Replies(ResponseCallback):
        frame = None

        def received(self, files, message_data):
            self.frame = (files, message_data)

    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cb = Replies()
    cb.client = sock
    t0 = time.perf_counter()
    sock.sendall(frame)
    TPFrameReader().read(sock, cb)
    seconds = time.perf_counter() - t0
    sock.close()
    size = len(frame) - (18 + 10 + len(name.encode()))
    reply = json.loads(cb.frame[1] or b"{}")
    got = reply.get("files") or [{}]
    ok = got[0].get("size") == size and got[0].get("sha256") == digest
    print(json.dumps({"bytes": size, "seconds": seconds,
                      "outcome": "confirmed" if ok else "mismatch", "reply": reply}))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--out", required=True)
    c = sub.add_parser("send")
    c.add_argument("--addr", required=True)
    c.add_argument("file")
    a = ap.parse_args()
    if a.cmd == "serve":
        serve(a.out)
        return 0
    return send_file(a.addr, a.file)


if __name__ == "__main__":
    sys.exit(main())
