"""T10-T12 driver: a tej-protoc 0.2.4 `TPServer` that stores what it receives.

Usage: python tej_server.py OUT_DIR MODE

Binds 127.0.0.1:0 and prints `listening tej-py 127.0.0.1:PORT`. Every frame that reaches
`received()` has its files written to OUT_DIR (the name as received; names with `/` or starting
with `.` are refused) and one JSON line `{"custom_status", "files": [[name, size]], "message"}` printed.
For a status-0 frame MODE decides the answer:
  ok         status 0, message {"files":[{"name","size","sha256"}]} (a plain TEJ application's summary)
  wrong-sha  the same with every sha256 replaced by 64 zeros
  silent     no answer
Answers are written with `sendall` (tej.md 2.1). Killed by SIGALRM after 300 s.
"""

import hashlib
import json
import os
import signal
import sys

from tej_protoc.callbacks import ResponseCallback
from tej_protoc.protocol import BytesBuilder
from tej_protoc.server import TPServer


def main() -> None:
    out_dir, mode = sys.argv[1], sys.argv[2]
    signal.alarm(300)

    class Callback(ResponseCallback):
        def received(self, files, message_data):
            summary = []
            for f in files:
                if "/" in f.name or f.name.startswith(".") or not f.name:
                    raise ValueError("unsafe name %r" % f.name)
                with open(os.path.join(out_dir, f.name), "wb") as out:
                    out.write(f.data)
                digest = hashlib.sha256(f.data).hexdigest()
                if mode == "wrong-sha":
                    digest = "0" * 64
                summary.append({"name": f.name, "size": f.size, "sha256": digest})
            print(
                json.dumps(
                    {
                        "custom_status": self.custom_status,
                        "files": [[f.name, f.size] for f in files],
                        "message": None if message_data is None else message_data.decode("utf-8", "replace"),
                    }
                ),
                flush=True,
            )
            if self.custom_status == 0 and mode != "silent":
                reply = BytesBuilder(0).set_message(
                    json.dumps({"files": summary}, separators=(",", ":")).encode()
                )
                self.client.sendall(reply.bytes())

    server = TPServer("127.0.0.1", 0, Callback)
    port = server.__server__.getsockname()[1]
    print("listening tej-py 127.0.0.1:%d" % port, flush=True)
    server.listen()


if __name__ == "__main__":
    main()
