import random, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(10)
def name(s):
    return b"".join(bytes([len(l)]) + l.encode() for l in s.split(".")) + b"\0"
QNAME = name("registry.example.test")
def query(family, prefix, addr):
    opt = struct.pack("!HBB", family, prefix, 0) + addr
    rdata = struct.pack("!HH", 8, len(opt)) + opt
    return (struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 1) + QNAME + struct.pack("!HH", 1, 1)
            + b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(rdata)) + rdata)
def bad(a):
    return (a >> 24 in (0, 10, 127) or a >> 24 >= 224 or a >> 20 == 0xac1
            or a >> 16 in (0xc0a8, 0xa9fe))
v4, v6 = set(), set()
while len(v4) < n * 9 // 10:
    a = rng.getrandbits(24) << 8
    if not bad(a):
        v4.add(a)
while len(v6) < n - len(v4):
    v6.add((0x2 << 52) | rng.getrandbits(52))  # in 2000::/4, as /56 prefixes (56 bits)
qs = ([query(1, 24, a.to_bytes(4, "big")[:3]) for a in v4]
      + [query(2, 56, b.to_bytes(7, "big")) for b in v6])
rng.shuffle(qs)
with open(path, "wb") as f:
    for m in qs:
        f.write(struct.pack("!H", len(m)) + m)
print(f"cold.bin: {len(v4)} IPv4 /24 + {len(v6)} IPv6 /56 distinct subnets, shuffled", file=sys.stderr)
