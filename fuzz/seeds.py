#!/usr/bin/env python3
"""Writes the seed corpus: fuzz/corpus/<target>/seed-* (committed; see fuzz/README.md).

A few small valid inputs per target, in each target's input layout: a real client preface with
SETTINGS and requests (raw and Huffman-coded HPACK, CONTINUATION, padding), a part's answers,
RFC 7541's examples, gRPC-Web bodies in both encodings, routed messages, data-channel requests,
and the repository's example configs. Deterministic: run it again after changing a layout.

    python3 fuzz/seeds.py
"""
import base64
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# === HPACK (RFC 7541) ===


def huffman_table():
    """Canonical codes from the code lengths in crates/http2/src/huffman.rs."""
    src = open(os.path.join(ROOT, "crates/http2/src/huffman.rs"), encoding="utf-8").read()
    body = src[src.index("const LENGTHS"):]
    body = body[body.index("= [") + 3:body.index("];")]
    body = re.sub(r"//[^\n]*", "", body)
    lengths = [int(x) for x in re.findall(r"\d+", body)]
    assert len(lengths) == 257, len(lengths)
    codes, code = {}, 0
    for n in range(1, 31):
        for sym, length in enumerate(lengths):
            if length == n:
                codes[sym] = (code, n)
                code += 1
        code <<= 1
    return codes


CODES = huffman_table()


def huffman(data):
    acc, bits, out = 0, 0, bytearray()
    for b in data:
        code, n = CODES[b]
        acc, bits = (acc << n) | code, bits + n
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits:
        pad = 8 - bits
        out.append(((acc << pad) & 0xFF) | ((1 << pad) - 1))
    return bytes(out)


def hint(value, prefix, first=0):
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append(value % 128 | 0x80)
        value //= 128
    out.append(value)
    return bytes(out)


def hstr(s, huff=False):
    if huff:
        code = huffman(s)
        return hint(len(code), 7, 0x80) + code
    return hint(len(s), 7) + s


def field(name, value, indexing=False, huff=False):
    """A literal with a new name: with incremental indexing, or without indexing."""
    return (b"\x40" if indexing else b"\x00") + hstr(name, huff) + hstr(value, huff)


def request_block(path, huff=False, extra=()):
    block = b"\x83" + b"\x86"  # :method POST, :scheme http
    block += b"\x44" + hstr(path, huff)  # :path, name from the static table, indexed
    block += b"\x41" + hstr(b"localhost:8080", huff)  # :authority
    block += field(b"content-type", b"application/grpc", True, huff)
    block += field(b"te", b"trailers", True)
    for n, v in extra:
        block += field(n, v)
    return block


# === HTTP/2 frames (RFC 9113) ===


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20


def settings(*params):
    return frame(SETTINGS, 0, 0, b"".join(i.to_bytes(2, "big") + v.to_bytes(4, "big") for i, v in params))


def grpc(message, compressed=False):
    return bytes([1 if compressed else 0]) + len(message).to_bytes(4, "big") + message


# === protobuf ===


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def pb_int(num, value):
    return varint(num << 3) + varint(value)


# === seeds ===

seeds = {}


def seed(target, name, data):
    seeds.setdefault(target, []).append((name, data))


def server_requests():
    """Client frames after the preface: SETTINGS, then calls for each handler branch."""
    out = settings((2, 0), (4, 4 << 20), (3, 100)) + frame(WINDOW, 0, 0, (1 << 20).to_bytes(4, "big"))
    msg = grpc(pb_bytes(1, b"motor1") + pb_int(2, 1))
    # Echo (path length % 4 == 0), with a custom header and trailers.
    out += frame(HEADERS, END_HEADERS, 1, request_block(b"/svc.S/Echo1", extra=[(b"x-id", b"1")]))
    out += frame(DATA, 0, 1, msg)
    out += frame(HEADERS, END_HEADERS | END_STREAM, 1, field(b"x-end", b"yes"))
    # Answered at once (% 4 == 1), Huffman-coded head, body ends on an empty DATA frame.
    out += frame(HEADERS, END_HEADERS, 3, request_block(b"/svc.S/Fast12", huff=True))
    out += frame(DATA, 0, 3, msg) + frame(DATA, END_STREAM, 3, b"")
    # Trailers-only (% 4 == 2), the block split over CONTINUATION, padded and prioritized.
    block = request_block(b"/svc.S/Trail12")
    first = bytes([3]) + (0).to_bytes(4, "big") + bytes([15]) + block[:10] + b"\0\0\0"
    out += frame(HEADERS, PADDED | PRIO, 5, first)
    out += frame(CONT, END_HEADERS, 5, block[10:])
    out += frame(DATA, END_STREAM | PADDED, 5, bytes([4]) + msg + b"\0" * 4)
    # A failing body (% 4 == 3), then reset by the client.
    out += frame(HEADERS, END_HEADERS, 7, request_block(b"/svc.S/Fail"))
    out += frame(DATA, 0, 7, msg) + frame(RST, 0, 7, (8).to_bytes(4, "big"))
    out += frame(PING, 0, 0, b"12345678") + frame(PRIORITY, 0, 9, (1).to_bytes(4, "big") + b"\x10")
    out += frame(SETTINGS, ACK, 0, b"")
    return out


def client_answers():
    """A part's side: SETTINGS, ACK, then answers to streams 1, 3 and 5."""
    out = settings((3, 100), (4, 1 << 20), (5, 16384)) + frame(SETTINGS, ACK, 0, b"")
    out += frame(WINDOW, 0, 0, (1 << 20).to_bytes(4, "big"))
    status = field(b":status", b"200", True) + field(b"content-type", b"application/grpc", True)
    for stream in (1, 3, 5):
        out += frame(HEADERS, END_HEADERS, stream, status)
        out += frame(DATA, 0, stream, grpc(pb_int(1, 1) + pb_bytes(2, b"ok")))
        out += frame(HEADERS, END_HEADERS | END_STREAM, stream, field(b"grpc-status", b"0"))
    out += frame(PING, 0, 0, b"pingping") + frame(GOAWAY, 0, 0, (5).to_bytes(4, "big") + b"\0\0\0\0bye")
    return out


def write_seeds():
    # h2_frame: flags, then bytes.
    frames = server_requests()
    seed("h2_frame", "seed-client-connection", bytes([0x08]) + PREFACE + frames)
    seed("h2_frame", "seed-server-connection", bytes([0x13]) + client_answers())
    seed("h2_frame", "seed-tight-limits", bytes([0xC5]) + frames)

    # hpack: mode 0 (blocks, each with a 16-bit length), 1 (lists), 2 (Huffman).
    def blocks(*hexes, limit=0):
        out = bytes([0, limit])
        for h in hexes:
            b = bytes.fromhex(h)
            out += len(b).to_bytes(2, "big") + b
        return out

    seed("hpack", "seed-rfc-c3", blocks(
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"))
    seed("hpack", "seed-rfc-c4-huffman", blocks(
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
    seed("hpack", "seed-size-update-and-limit", blocks(
        "3fe11f" + "828684410f7777772e6578616d706c652e636f6d", "20" + "82", limit=2))
    seed("hpack", "seed-grpc-request", bytes([0, 0]) + len(request_block(b"/a.B/C", True)).to_bytes(2, "big")
         + request_block(b"/a.B/C", True))
    lists = bytearray([1])
    for control, value in [(0, b"/viam.component.motor.v1.MotorService/SetPower"), (2, b"application/grpc"),
                           (3, b"10S"), (0x24, b"Bearer token"), (0x47, b"x-custom"),
                           (0, b"/viam.component.motor.v1.MotorService/SetPower"), (0x88, b""),
                           (0x15, b"x-other-name"), (0x49, b"a=b")]:
        if control & 0x80:
            lists.append(control)
            continue
        lists += bytes([control, len(value)]) + value
    seed("hpack", "seed-round-trip", bytes(lists))
    seed("hpack", "seed-huffman", bytes([2]) + huffman(b"/viam.robot.v1.RobotService/ResourceNames"))
    seed("hpack", "seed-huffman-bad-padding", bytes([2]) + huffman(b"www.example.com")[:-1] + b"\x00")

    # h2_server: two flag bytes, then the client's bytes after its preface.
    seed("h2_server", "seed-calls", bytes([0x00, 0x00]) + frames)
    seed("h2_server", "seed-calls-per-frame", bytes([0x07, 0x00]) + frames)
    seed("h2_server", "seed-calls-split-eof-drain", bytes([0x1D, 0x00]) + frames)
    seed("h2_server", "seed-small-windows-slow-reader", bytes([0xA2, 0x03]) + frames)

    # h2_client: a flag byte, then the part's bytes.
    answers = client_answers()
    seed("h2_client", "seed-answers-per-frame", bytes([0x07]) + answers)
    seed("h2_client", "seed-answers-at-once", bytes([0x00]) + answers)
    seed("h2_client", "seed-answers-split-eof", bytes([0x1B]) + answers)
    seed("h2_client", "seed-keepalive-small-windows", bytes([0xC4]) + answers[:40])

    # grpc_web: flags, method byte, body.
    body = grpc(pb_bytes(1, b"sub1:motor1")) + grpc(b"")
    seed("grpc_web", "seed-echo-binary", bytes([0x08, 0]) + body)
    seed("grpc_web", "seed-echo-text", bytes([0x2B, 0]) + base64.b64encode(body))
    seed("grpc_web", "seed-echo-text-in-pieces", bytes([0x6C, 0]) + base64.b64encode(body))
    seed("grpc_web", "seed-echo-text-two-quanta", bytes([0x2C, 0])
         + base64.b64encode(body[:7]) + base64.b64encode(body[7:]))
    seed("grpc_web", "seed-gateway-resource-names", bytes([0x00, 0]) + grpc(b""))
    seed("grpc_web", "seed-gateway-text-set-power", bytes([0x20, 4])
         + base64.b64encode(grpc(pb_bytes(1, b"sub1:motor1") + b"\x11" + b"\0" * 7 + b"\x3f")))
    seed("grpc_web", "seed-gateway-preflight", bytes([0x80, 1]))

    # name_rewrite: flags, then the client's body.
    first = grpc(pb_bytes(1, b"sub1:motor1") + pb_int(2, 5))
    later = grpc(pb_bytes(1, b"sub1:motor1") + pb_bytes(3, b"x")) + grpc(pb_bytes(1, b"other"))
    seed("name_rewrite", "seed-part-colon-stream", bytes([0x03]) + first + later + grpc(b"\x0a")[:4])
    seed("name_rewrite", "seed-prefix", bytes([0x05]) + grpc(pb_bytes(1, "été-ü".encode()))
         + grpc(pb_bytes(1, "été-ü".encode()), compressed=True))
    seed("name_rewrite", "seed-nested-init-name", bytes([0x08 | 0x20])
         + grpc(pb_bytes(1, pb_bytes(1, b"cell-m1") + pb_int(2, 1))) + grpc(pb_bytes(2, b"data")))
    seed("name_rewrite", "seed-bare-name-counter", bytes([0x80]) + grpc(pb_bytes(1, b"motor1")))

    # webrtc_channel: flags, then messages (raw) or operations (structured).
    def request(stream, kind, payload):
        return pb_bytes(1, pb_int(1, stream) if stream else b"") + pb_bytes(kind, payload)

    def headers(method, md=None, seconds=0):
        h = pb_bytes(1, method)
        if md:
            entry = pb_bytes(1, md[0]) + pb_bytes(2, pb_bytes(1, md[1]))
            h += pb_bytes(2, pb_bytes(1, entry))
        if seconds:
            h += pb_bytes(3, pb_int(1, seconds))
        return h

    def message(data, eom=True, eos=False):
        m = pb_int(1, 1) + pb_bytes(2, pb_bytes(1, data) + (pb_int(2, 1) if eom else b""))
        return m + (pb_int(3, 1) if eos else b"")

    set_power = grpc(pb_bytes(1, b"sub1:motor1"))
    raw = [
        request(1, 2, headers(b"/viam.component.motor.v1.MotorService/SetPower", (b"x-id", b"7"), 5)),
        request(1, 3, message(set_power)),
        request(3, 2, headers(b"/viam.robot.v1.RobotService/StreamStatus")),
        request(3, 3, message(set_power[:4], eom=False)),
        request(3, 3, message(set_power[4:], eos=True)),
        request(0, 2, headers(b"/acme.component.counter.v1.CounterService/Get")),
        request(0, 3, pb_int(3, 1)),
        request(5, 2, headers(b"nonsense")),
        request(7, 2, headers(b"/viam.robot.v1.RobotService/StreamStatus")),
        pb_bytes(1, pb_int(1, 7)) + pb_int(4, 1),
    ]
    seed("webrtc_channel", "seed-raw-streams", bytes([0]) + b"".join(len(m).to_bytes(2, "big") + m for m in raw))
    ops = bytearray([1])
    ops += bytes([0 | 1 << 2, 0, 4]) + b"x-id" + bytes([1]) + b"7" + bytes([5])  # headers, stream 1, unary
    ops += bytes([1 | 1 << 2, 0, len(set_power)]) + set_power  # whole message
    ops += bytes([0 | 2 << 2, 1, 0, 0, 0])  # headers, stream 2, bidi
    ops += bytes([1 | 2 << 2, 4, 3]) + set_power[:3]  # first packet, no eom
    ops += bytes([1 | 2 << 2, 8, len(set_power) - 3]) + set_power[3:]  # last packet, eos
    ops += bytes([0 | 3 << 2, 2, 0, 0, 0]) + bytes([2 | 3 << 2])  # custom API, end of stream
    ops += bytes([0 | 4 << 2, 1, 0, 0, 0]) + bytes([3 | 4 << 2])  # opened, reset
    seed("webrtc_channel", "seed-structured", bytes(ops))

    # config: the repository's examples, and problems of every kind.
    examples = os.path.join(ROOT, "examples")
    for name in sorted(os.listdir(examples)):
        if name.endswith(".json"):
            seed("config", "seed-example-" + name[:-5], open(os.path.join(examples, name), "rb").read())
    seed("config", "seed-problems", b'{"network":{"bind_address":"nope"},"remotes":[{"name":"-x","address":"h"},'
         b'{"name":"a","address":"a:1","prefix":"p:","connection_check_interval":"1x"}],'
         b'"gateway":{"main_part":"zz","default_timeout":"1.5h","idle_spin":"2ms","max_connections":0}}')
    seed("config", "seed-duration-line", b"1h2m3.5s4ms5us6ns\n{}")


def main():
    write_seeds()
    for target, items in sorted(seeds.items()):
        d = os.path.join(OUT, target)
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            if old.startswith("seed-"):
                os.remove(os.path.join(d, old))
        for name, data in items:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(items)} seeds")


if __name__ == "__main__":
    main()
