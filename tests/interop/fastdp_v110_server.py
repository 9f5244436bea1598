"""A FastDP 1.1.0 receiver written from fastdp.md 1.2's description of the author's cli.py
server, for testing `ferry fastdp send --v1`.

Usage: fastdp_v110_server.py OUTDIR

Listens on 127.0.0.1, port 0, prints `listening fastdp-v110 127.0.0.1:PORT`, and serves
connections one at a time until killed: header lines up to the empty one, the 101 echoing the
key with version 1.1.0, one JMSG header, FullChunk chunks, the SHA-256 of what arrived checked
against `Checksum`, the data decoded (zstandard, zipfile, tarfile) and saved under FileName's
base name, then `File received successfully.` or `ERROR: <text>`.
"""

import hashlib
import io
import json
import os
import socket
import struct
import sys
import tarfile
import zipfile

import zstandard


def read_exact(f, n):
    b = f.read(n)
    if len(b) != n:
        raise EOFError
    return b


def handle(conn, out):
    f = conn.makefile("rb")
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if b":" in line:
            k, v = line.decode().strip().split(":", 1)
            headers[k.strip()] = v.strip()
    if headers.get("Upgrade", "").lower() != "fastdp" or headers.get("Sec-FastDP-Version") != "1.1.0":
        return
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: fastdp\r\nConnection: Upgrade\r\n"
            "Sec-FastDP-Key: %s\r\nSec-FastDP-Version: 1.1.0\r\n\r\n" % headers["Sec-FastDP-Key"]
        ).encode()
    )
    (n,) = struct.unpack("!I", read_exact(f, 4))
    h = json.loads(read_exact(f, n).decode())
    sha = hashlib.sha256()
    parts = []
    try:
        for _ in range(h["FullChunk"]):
            num, length = struct.unpack("!II", read_exact(f, 8))
            piece = read_exact(f, length)
            parts.append((num, piece))
            sha.update(piece)
    except EOFError:
        conn.sendall(b"ERROR: Incomplete chunk data.")
        return
    data = b"".join(p for _, p in sorted(parts, key=lambda x: x[0]))
    if sha.hexdigest() != h["Checksum"]:
        conn.sendall(b"ERROR: Checksum mismatch.")
        return
    kind = h["CompressType"]
    if kind == "Zstd":
        data = zstandard.ZstdDecompressor().decompress(data)
    elif kind == "Zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            data = z.read(z.namelist()[0])
    elif kind == "TarGz":
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
            data = t.extractfile(t.getmembers()[0]).read()
    with open(os.path.join(out, os.path.basename(h["FileName"])), "wb") as w:
        w.write(data)
    conn.sendall(b"File received successfully.")


def main():
    out = sys.argv[1]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    print("listening fastdp-v110 127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        try:
            handle(conn, out)
        except Exception as e:  # one bad connection must not stop the test server
            sys.stderr.write("error: %r\n" % (e,))
        finally:
            conn.close()


if __name__ == "__main__":
    main()
