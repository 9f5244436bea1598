"""T9 driver: a tej-protoc 0.2.4 `TPClient` that sends one deliver frame to a TEJ server.

Usage: python tej_client.py HOST PORT MESSAGE FILE...

The frame (status 0, every FILE under its base name, MESSAGE as the message) is built with
`BytesBuilder` and written with `sendall`: tej-protoc's own `protocol.send()` makes a single
`socket.send()` and ignores a short count (tej.md 2.1). Names must be ASCII: tej-protoc writes the
name length in code points. Every frame that reaches `received()` is printed as one JSON line
`{"custom_status", "version", "files": [[name, size]], "message"}`; the script exits 0 after the
first one, 3 if the connection closes first, and is killed by SIGALRM after 120 s.
"""

import json
import os
import signal
import sys

from tej_protoc.callbacks import ResponseCallback
from tej_protoc.client import TPClient
from tej_protoc.protocol import BytesBuilder


def main() -> None:
    host, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    paths = sys.argv[4:]
    signal.alarm(120)

    class Callback(ResponseCallback):
        def connected(self, client):
            builder = BytesBuilder(0)
            for path in paths:
                with open(path, "rb") as f:
                    builder.add_file(os.path.basename(path), f.read())
            builder.set_message(message.encode())
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
