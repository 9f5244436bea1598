"""A FastDP 1.1.0 sender written from fastdp.md 1.2's description of the author's cli.py.

Usage: fastdp_v110_sender.py HOST PORT FILE COMPRESS [--read-reply]

Like cli.py it reads the whole file into memory, compresses it whole (None, Zstd with
python-zstandard's defaults, Zip with one deflated member, TarGz with one member), sends the
Upgrade request with the key `some-random-key`, reads header lines up to the empty one, sends one
JMSG header written by json.dumps with its default separators, then chunks 0, 1, 2, ... at once
and exits without reading the reply (F36). With --read-reply it prints the reply instead, for
tests that check it. Exit 0 after the last write; 2 when the handshake saw another version.
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


def chunk_size_for(n):
    if n <= 10 * 1024 * 1024:
        return 256 * 1024
    if n <= 1024 * 1024 * 1024:
        return 1024 * 1024
    return 4 * 1024 * 1024


def compressed(path, kind):
    with open(path, "rb") as f:
        data = f.read()
    base = os.path.basename(path)
    if kind == "None":
        return data
    if kind == "Zstd":
        return zstandard.ZstdCompressor().compress(data)
    if kind == "Zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(base, data)
        return buf.getvalue()
    if kind == "TarGz":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            info = tarfile.TarInfo(name=base)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        return buf.getvalue()
    raise SystemExit("unknown compression " + kind)


def main():
    host, port, path, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    read_reply = "--read-reply" in sys.argv[5:]
    sock = socket.create_connection((host, port))
    rf = sock.makefile("rb")
    request = (
        "GET /fastdp-endpoint HTTP/1.1\r\n"
        "Host: %s:%d\r\n"
        "Upgrade: fastdp\r\n"
        "Connection: Upgrade\r\n"
        "Sec-FastDP-Key: some-random-key\r\n"
        "Sec-FastDP-Version: 1.1.0\r\n"
        "\r\n" % (host, port)
    )
    sock.sendall(request.encode())
    headers = {}
    while True:
        line = rf.readline()
        if line == b"\r\n":
            break
        if line == b"":
            # cli.py spins forever here; a test must not.
            raise SystemExit(3)
        if b":" in line:
            k, v = line.decode().strip().split(":", 1)
            headers[k.strip()] = v.strip()
    if headers.get("Sec-FastDP-Version") != "1.1.0":
        raise SystemExit(2)
    data = compressed(path, kind)
    size = len(data)
    one = chunk_size_for(size)
    count = size // one + 1 if size % one else size // one
    header = {
        "OneChunk": one,
        "FullChunk": count,
        "FullSize": size,
        "DPVersion": "1.1.0",
        "CompressType": kind,
        "FileName": os.path.basename(path) or path.split("/")[-1],
        "Checksum": hashlib.sha256(data).hexdigest(),
    }
    body = json.dumps(header).encode()
    sock.sendall(struct.pack("!I", len(body)) + body)
    for i, at in enumerate(range(0, size, one)):
        piece = data[at : at + one]
        sock.sendall(struct.pack("!II", i, len(piece)) + piece)
    if read_reply:
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            b = sock.recv(4096)
            if not b:
                break
            reply += b
        sys.stdout.write(reply.decode("ascii", "replace"))
    sock.close()


if __name__ == "__main__":
    main()
