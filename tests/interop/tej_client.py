"""T9 driver: a tej-protoc 0.2.4 `TPClient` that sends one deliver frame to a TEJ server.

Usage: python tej_client.py [--ping-seconds N] HOST PORT MESSAGE FILE...

The frame (status 0, every FILE under its base name, MESSAGE as the message) is built with
`BytesBuilder` and written with `sendall`: tej-protoc's own `protocol.send()` makes a single
`socket.send()` and ignores a short count (tej.md 2.1). Names must be ASCII: tej-protoc writes the
name length in code points. Every frame that reaches `received()` is printed as one JSON line
`{"custom_status", "version", "files": [[name, size]], "message"}`; the script exits 0 after the
first one, 3 if the connection closes first, and is killed by SIGALRM after 120 s.
With `--ping-seconds N` the client first pings once a second for N seconds with tej-protoc's
own `Ping` thread (status 2), then sends the frame.
"""

import json
import os
import signal
import sys
import time

from tej_protoc.callbacks import ResponseCallback
from tej_protoc.client import TPClient
from tej_protoc import protocol
from tej_protoc.ping import Ping
from tej_protoc.protocol import BytesBuilder


def main() -> None:
    args = sys.argv[1:]
    ping_seconds = 0.0
    if args[:1] == ["--ping-seconds"]:
        ping_seconds = float(args[1])
        args = args[2:]
    host, port, message = args[0], int(args[1]), args[2]
    paths = args[3:]
    signal.alarm(120)

    class Callback(ResponseCallback):
        def connected(self, client):
            if ping_seconds > 0:
                ping = Ping(client, 1)
                ping.start()
                time.sleep(ping_seconds)
                # The ping thread checks the flag after each sleep and sends under
                # `protocol.send_lock`: taken below, no ping can interleave with the frame.
                ping.stop()
            builder = BytesBuilder(0)
            for path in paths:
                with open(path, "rb") as f:
                    builder.add_file(os.path.basename(path), f.read())
            builder.set_message(message.encode())
            with protocol.send_lock:
                client.sendall(builder.bytes())

        def received(self, files, message_data):
            print(
                json.dumps(
                    {
                        "custom_status": self.custom_status,
                        "version": self.protocol_version,
                        "files": [[f.name, f.size] for f in files],
                        "message": None if message_data is None else message_data.decode("utf-8", "replace"),
                    }
                ),
                flush=True,
            )
            os._exit(0)

        def disconnected(self):
            print(json.dumps({"disconnected": True}), flush=True)
            os._exit(3)

    TPClient(host, port, Callback).listen()
    os._exit(3)


if __name__ == "__main__":
    main()
