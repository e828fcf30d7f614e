#!/usr/bin/env python3
"""Idle memory of the gateway: RSS idle, per idle HTTP/2 client connection, per idle part.

    python3 bench/memory.py [--bin target/release/partgate] [--parts 1] [--conns 1000]

Starts PARTS simulated parts (`partgate sim-part`, one process each, on 127.0.0.1:21000+),
a gateway (`partgate run`) in front of them, waits for it to settle and reads its VmRSS; then
opens CONNS h2c connections (preface + SETTINGS, SETTINGS ACK), holds them idle and reads VmRSS
again. Per-part memory: run once with --parts 1 and once with --parts 100, and divide the
difference of the idle figures by 99. Every process it starts is stopped by its PID at the end.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_ACK = bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/partgate")
    ap.add_argument("--parts", type=int, default=1)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--base-port", type=int, default=21000)
    args = ap.parse_args()
    parts, socks, gw = [], [], None
    cfg_path = None
    try:
        for i in range(args.parts):
            parts.append(subprocess.Popen(
                [args.bin, "sim-part", "--name", "main", "--bind", f"127.0.0.1:{args.base_port + i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2 + args.parts * 0.02)
        cfg = {"network": {"bind_address": "127.0.0.1:0"},
               "remotes": [{"name": f"p{i}", "address": f"127.0.0.1:{args.base_port + i}",
                            "insecure": True} for i in range(args.parts)]}
        fd, cfg_path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        env = {**os.environ, "PARTGATE_LOG": "warn,partgate::gateway=info", "NO_COLOR": "1"}
        gw = subprocess.Popen([args.bin, "run", "--config", cfg_path], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        addr = None
        for line in gw.stderr:
            m = re.search(r"listening on (\S+)", line.decode(errors="replace"))
            if m:
                addr = m.group(1)
                break
        if addr is None:
            sys.exit("gateway did not start")
        os.set_blocking(gw.stderr.fileno(), False)
        host, port = addr.rsplit(":", 1)
        time.sleep(3)
        idle = rss_kib(gw.pid)
        for _ in range(args.conns):
            s = socket.create_connection((host, int(port)))
            s.sendall(PREFACE + SETTINGS)
            socks.append(s)
        time.sleep(1)
        for s in socks:
            s.setblocking(False)
            try:
                s.recv(65536)
            except BlockingIOError:
                pass
            s.sendall(SETTINGS_ACK)
        time.sleep(2)
        held = rss_kib(gw.pid)
        per_conn = (held - idle) / max(args.conns, 1)
        print(f"parts={args.parts} idle_rss_kib={idle} conns={args.conns} "
              f"rss_with_conns_kib={held} per_conn_kib={per_conn:.1f}")
    finally:
        for s in socks:
            s.close()
        if gw is not None:
            gw.terminate()
            gw.wait(timeout=15)
        for p in parts:
            p.terminate()
        for p in parts:
            p.wait(timeout=15)
        if cfg_path:
            os.remove(cfg_path)


if __name__ == "__main__":
    main()
