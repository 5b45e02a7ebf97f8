#!/usr/bin/env python3
"""Deterministic test data for the benchmark.

  gen.py image  PATH SIZE SEED          mixed-content image, every byte written
  gen.py sparse PATH SIZE SRC PIECES    sparse image of SIZE: SRC cut into PIECES
                                        equal pieces spread evenly over SIZE
  gen.py change PATH SEED PERCENT       rewrite PERCENT % of the 64 KiB chunks that
                                        hold data, at random places, with new random
                                        bytes; prints how many chunks it rewrote

The image is made of 256 KiB blocks, each picked at random: 40 % random bytes
(incompressible), 25 % zeros (written, not holes), 35 % text-like lines (compressible,
every block different). The same SEED always gives the same bytes.
"""
import os
import random
import sys

BLOCK = 256 << 10
CHUNK = 64 << 10


def text_block(r, words, n):
    out = []
    size = 0
    while size < n:
        line = "%08d %s: %s\n" % (
            r.randrange(10**8),
            r.choice(words),
            " ".join(r.choices(words, k=r.randint(4, 14))),
        )
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]


def image(path, size, seed):
    r = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(r.choices(letters, k=r.randint(2, 11))) for _ in range(5000)]
    zero = bytes(BLOCK)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(BLOCK, left)
            p = r.random()
            if p < 0.40:
                b = r.randbytes(n)
            elif p < 0.65:
                b = zero[:n]
            else:
                b = text_block(r, words, n)
            f.write(b)
            left -= n
        f.flush()
        os.fsync(f.fileno())


def sparse(path, size, src, pieces):
    total = os.path.getsize(src)
    piece = total // pieces
    stride = size // pieces
    with open(src, "rb") as s, open(path, "wb") as d:
        d.truncate(size)
        for i in range(pieces):
            d.seek(i * stride)
            d.write(s.read(piece))
        os.fsync(d.fileno())


def data_chunks(fd, size):
    """Indexes of the 64 KiB chunks that hold data (SEEK_DATA / SEEK_HOLE)."""
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.extend(range(start // CHUNK, (end + CHUNK - 1) // CHUNK))
        pos = end
    return sorted(set(out))


def change(path, seed, percent):
    r = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        cands = data_chunks(fd, size)
        k = max(1, round(len(cands) * percent / 100))
        for c in sorted(r.sample(cands, k)):
            os.pwrite(fd, r.randbytes(CHUNK), c * CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(k)


def main(argv):
    cmd = argv[1]
    if cmd == "image":
        image(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "sparse":
        sparse(argv[2], int(argv[3]), argv[4], int(argv[5]))
    elif cmd == "change":
        change(argv[2], int(argv[3]), float(argv[4]))
    else:
        sys.exit("usage: gen.py image|sparse|change ...")


if __name__ == "__main__":
    main(sys.argv)
