#!/usr/bin/env python3
"""A local mirror of cloud.debian.org for tests and the demo.

Serves a directory on 127.0.0.1 only, honours Range/If-Range (206), and logs every request
as one line: "<path> range=<Range or -> status=<code> bytes=<body bytes sent>", so tests can
count the image bytes kvmprov fetched.

    mirror.py --root DIR [--port 0] [--port-file F] [--log F]
"""
import argparse
import email.utils
import http.server
import os
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    root = "."
    log_file = None
    lock = threading.Lock()

    def log_message(self, fmt, *args):  # quiet default logging
        pass

    def record(self, status, sent):
        if self.log_file:
            with self.lock, open(self.log_file, "a") as f:
                f.write(f"{self.path} range={self.headers.get('Range', '-')} status={status} bytes={sent}\n")

    def do_GET(self):
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = os.path.realpath(os.path.join(self.root, rel))
        if not path.startswith(os.path.realpath(self.root)) or not os.path.isfile(path):
            self.send_error(404)
            self.record(404, 0)
            return
        st = os.stat(path)
        size = st.st_size
        etag = f'"{st.st_ino:x}-{size:x}-{int(st.st_mtime):x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range in (etag, last_modified)):
            try:
                unit, spec = rng.split("=", 1)
                first, last = spec.split("-", 1)
                if unit.strip() != "bytes":
                    raise ValueError
                start = int(first)
                end = int(last) if last else size - 1
            except ValueError:
                start, end = 0, size - 1
            else:
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    self.record(416, 0)
                    return
                end = min(end, size - 1)
                status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        try:
            with open(path, "rb") as f:
                f.seek(start)
                while sent < length:
                    chunk = f.read(min(1 << 20, length - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.record(status, sent)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    a = ap.parse_args()
    Handler.root = a.root
    Handler.log_file = a.log
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    port = srv.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, a.port_file)
    print(f"serving {a.root} on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
