"""Measure the limits below any DICOM sender: loopback TCP and file reading.

Run as ``python -m perf.rawcopy`` with one of three commands:

``sink``
    Listen on a free port of 127.0.0.1, print the port, accept one
    connection, read until the peer closes it, print the byte count, exit.
``send HOST PORT FOLDER``
    Send the bytes of every ``.dcm`` file below FOLDER over one TCP
    connection with ``socket.sendfile`` (zero-copy on Linux) and TCP_NODELAY.
    No protocol, no acknowledgement: this is the loopback ceiling.
``read FOLDER``
    Read every ``.dcm`` file below FOLDER into one reused buffer and print the
    byte count. Files that were just written or sent are in the page cache, so
    this measures copying from the page cache, not the disk.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

CHUNK = 1 << 20


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def run_sink() -> int:
    """Accept one connection and count its bytes; return the count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        print(server.getsockname()[1], flush=True)
        conn, _ = server.accept()
        with conn:
            buffer = bytearray(CHUNK)
            total = 0
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                total += n
    print(total, flush=True)
    return total


def run_send(host: str, port: int, folder: Path) -> int:
    """Send every file's bytes over one connection; return the byte count."""
    total = 0
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for path in _files(folder):
            with open(path, "rb") as f:
                total += sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
    print(total, flush=True)
    return total


def run_read(folder: Path) -> int:
    """Read every file into one buffer; return the byte count."""
    buffer = bytearray(CHUNK)
    total = 0
    for path in _files(folder):
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                total += n
    print(total, flush=True)
    return total


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m perf.rawcopy")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sink", help="count the bytes of one TCP connection")
    send = commands.add_parser("send", help="send the files' bytes over TCP")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("folder", type=Path)
    read = commands.add_parser("read", help="read the files' bytes")
    read.add_argument("folder", type=Path)
    args = parser.parse_args(argv)

    if args.command == "sink":
        run_sink()
    elif args.command == "send":
        run_send(args.host, args.port, args.folder)
    else:
        run_read(args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
