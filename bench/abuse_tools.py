#!/usr/bin/env python3
"""Small loopback-only attack and measurement clients for bench/attack-mix.sh
and the amplification measurement (docs/security.md). Standard library only;
every loop is bounded in time and count, and every address must be loopback.

  abuse_tools.py slow-tcp   --port P --conns N --secs S
  abuse_tools.py malformed  --port P --secs S [--src ADDR] [--max N] [--rate PPS | --share F --metrics H:P]
  abuse_tools.py randnames  --zone gslb.test --count N > file
  abuse_tools.py amplification --port P --queries FILE [--names FILE] [--edns SIZE] [--do]
"""

import argparse
import ipaddress
import os
import random
import select
import socket
import struct
import sys
import threading
import time

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28,
         "SRV": 33, "DNSKEY": 48, "ANY": 255, "CAA": 257, "HTTPS": 65, "PTR": 12}


def loopback(addr):
    if not ipaddress.ip_address(addr).is_loopback:
        sys.exit(f"{addr} is not a loopback address")
    return addr


def name_wire(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(name, qtype, qid=None, edns=None, do=False):
    qid = random.getrandbits(16) if qid is None else qid
    arcount = 1 if edns else 0
    m = struct.pack("!HHHHHH", qid, 0x0000, 1, 0, 0, arcount)
    m += name_wire(name) + struct.pack("!HH", qtype, 1)
    if edns:
        m += b"\0" + struct.pack("!HHIH", 41, edns, 0x8000 if do else 0, 0)
    return m


def slow_tcp(args):
    """N connections that each trickle a 200-octet message, one octet every
    100 ms, reconnecting 10 ms after the server drops them, for S seconds."""
    host = loopback(args.host)
    stop = time.monotonic() + args.secs
    stats = {"connects": 0, "dropped_by_server": 0}
    lock = threading.Lock()

    def worker():
        while time.monotonic() < stop:
            try:
                s = socket.create_connection((host, args.port), timeout=1)
            except OSError:
                time.sleep(0.01)
                continue
            with lock:
                stats["connects"] += 1
            s.settimeout(0.2)
            msg = b"\x00\xc8" + b"A" * 200
            dropped = False
            for b in msg:
                if time.monotonic() >= stop:
                    break
                try:
                    s.send(bytes([b]))
                except OSError:
                    dropped = True
                    break
                time.sleep(0.1)
            if dropped:
                with lock:
                    stats["dropped_by_server"] += 1
            s.close()
            time.sleep(0.01)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.secs + 5)
    print(f"slow-tcp: {args.conns} concurrent, {stats['connects']} connections, "
          f"{stats['dropped_by_server']} dropped by the server", flush=True)


def malformed(args):
    """Malformed datagrams as fast as one process sends them, for S seconds
    (at most --max): truncated headers, bad QDCOUNT, pointer loops, bad
    label types, overrunning OPT records, bad COOKIE lengths, random bytes."""
    host = loopback(args.host)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.src:
        s.bind((loopback(args.src), 0))
    s.setblocking(False)
    base = query("www.gslb.test", 1, edns=1232)
    cases = [
        lambda: os.urandom(random.randint(0, 11)),                         # short header
        lambda: struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + name_wire("a.gslb.test") + b"\0\1\0\1",
        lambda: struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",  # pointer loop
        lambda: struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x40abc\0\0\1\0\1",  # label type 01
        lambda: base[:-2] + b"\x00\x40",                                  # OPT rdlen overruns
        lambda: base[:-2] + b"\x00\x07\x00\x0a\x00\x03abc",              # COOKIE of 3 octets
        lambda: os.urandom(random.randint(12, 600)),                      # noise
        lambda: base[: random.randint(12, len(base) - 1)],                # truncated anywhere
    ]
    stop = time.monotonic() + args.secs
    sent = 0
    start = time.monotonic()
    # --share: follow the server's own UDP counter, so that these datagrams
    # stay at least SHARE of all UDP it receives whatever the other streams
    # do (polled every 0.1 s from the loopback metrics endpoint).
    udp0 = udp_received(args.metrics) if args.share else None
    target, next_poll = 0, 0.0
    while time.monotonic() < stop and sent < args.max:
        if udp0 is not None and sent % 64 == 0:
            now = time.monotonic()
            if now >= next_poll:
                udp = udp_received(args.metrics)
                others = max(0, (udp if udp is not None else udp0) - udp0 - sent)
                target = int(others * args.share / (1 - args.share)) + 64
                next_poll = now + 0.1
            if sent >= target:
                time.sleep(max(0.0, min(next_poll, stop) - time.monotonic()))
                continue
        elif args.rate and sent % 64 == 0:
            ahead = sent / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        try:
            s.sendto(random.choice(cases)(), (host, args.port))
            sent += 1
        except BlockingIOError:
            select.select([], [s], [], 0.01)
        except OSError:
            pass
        # Drain replies (FORMERR) so the socket buffer never fills.
        try:
            while True:
                s.recv(65535)
        except OSError:
            pass
    print(f"malformed: {sent} datagrams in {args.secs}s", flush=True)


def udp_received(metrics):
    """The dataplane's opengslb_dns_messages_received_total for UDP, read
    from its metrics endpoint (a loopback host:port); None if unreadable."""
    import urllib.request

    host, _, port = metrics.rpartition(":")
    loopback(host)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('opengslb_dns_messages_received_total{transport="udp"}'):
                    return int(float(line.split()[-1]))
    except (OSError, ValueError):
        pass
    return None


def randnames(args):
    """A dnsperf query file of random names below the zone (NXDOMAIN)."""
    rnd = random.Random(args.seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(args.count):
        label = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(8, 20)))
        print(f"{label}.{args.zone} {rnd.choice(['A', 'AAAA'])}")


def exchange(sock, host, port, msg):
    sock.sendto(msg, (host, port))
    try:
        data = sock.recv(65535)
    except socket.timeout:
        return None
    return data


def amplification(args):
    """Bytes out ÷ bytes in for a cookieless client over UDP: over a query
    file (each line `name TYPE`, as dnsperf reads it) and for every name of
    --names crossed with every type (the worst single question)."""
    host = loopback(args.host)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    edns = args.edns or None
    mix = []
    with open(args.queries) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].upper() in TYPES:
                mix.append((parts[0], TYPES[parts[1].upper()]))
    total_in = total_out = 0
    unanswered = 0
    for name, qtype in mix:
        q = query(name, qtype, edns=edns, do=args.do)
        r = exchange(sock, host, args.port, q)
        if r is None:
            unanswered += 1
            continue
        total_in += len(q)
        total_out += len(r)
    print(f"query mix ({args.queries}, {len(mix)} queries, EDNS {edns or 'off'}, DO {int(args.do)}): "
          f"{total_out} octets out / {total_in} in = {total_out / max(total_in, 1):.2f}"
          f" ({unanswered} unanswered)")
    names = set(n for n, _ in mix)
    if args.names:
        with open(args.names) as f:
            names.update(l.strip() for l in f if l.strip())
    worst = []
    for name in sorted(names):
        for tname, qtype in TYPES.items():
            q = query(name, qtype, edns=edns, do=args.do)
            r = exchange(sock, host, args.port, q)
            if r is None:
                continue
            tc = bool(r[2] & 0x02) if len(r) > 2 else False
            worst.append((len(r) / len(q), len(r), len(q), name, tname, tc))
    worst.sort(reverse=True)
    print(f"worst single questions of {len(worst)} ({len(names)} names x {len(TYPES)} types):")
    for ratio, out, inn, name, tname, tc in worst[:5]:
        print(f"  {ratio:5.2f}  {out:5d} / {inn:3d} octets  {name} {tname}{'  (TC=1)' if tc else ''}")
    if worst:
        biggest = max(w[1] for w in worst)
        print(f"largest reply: {biggest} octets (EDNS size asked: {edns or 512})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("slow-tcp")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--conns", type=int, required=True)
    a.add_argument("--secs", type=float, required=True)
    a = sub.add_parser("malformed")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--secs", type=float, required=True)
    a.add_argument("--src")
    a.add_argument("--max", type=int, default=50_000_000)
    a.add_argument("--rate", type=int, default=0, help="datagrams per second (0 = as fast as possible)")
    a.add_argument("--share", type=float, default=0.0,
                   help="instead of --rate: keep these datagrams at this share (0..0.9) of all UDP the "
                        "server receives, read from --metrics")
    a.add_argument("--metrics", default="127.0.0.1:5400", help="the dataplane's metrics host:port (loopback)")
    a = sub.add_parser("randnames")
    a.add_argument("--zone", default="gslb.test")
    a.add_argument("--count", type=int, default=100_000)
    a.add_argument("--seed", type=int, default=9)
    a = sub.add_parser("amplification")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--queries", required=True)
    a.add_argument("--names")
    a.add_argument("--edns", type=int, default=1232, help="0 = no EDNS")
    a.add_argument("--do", action="store_true")
    args = p.parse_args()
    args.secs = min(getattr(args, "secs", 0), 120) if hasattr(args, "secs") else None
    if getattr(args, "share", 0) and not 0 < args.share <= 0.9:
        sys.exit("--share must be in (0, 0.9]")
    {"slow-tcp": slow_tcp, "malformed": malformed, "randnames": randnames,
     "amplification": amplification}[args.cmd](args)


if __name__ == "__main__":
    main()
