#!/usr/bin/env python3
"""Random 4 KiB reads of a file, timed one by one.

  randread.py PATH COUNT SEED

Reads COUNT blocks of 4 KiB at 4 KiB-aligned offsets drawn at random (the same SEED
gives the same offsets) with pread, and prints the median and the 99th percentile of
the time each read took, in microseconds: "MEDIAN P99".
"""
import os
import random
import sys
import time

BLOCK = 4096


def main():
    path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fd = os.open(path, os.O_RDONLY)
    blocks = os.fstat(fd).st_size // BLOCK
    r = random.Random(seed)
    took = []
    for _ in range(count):
        off = r.randrange(blocks) * BLOCK
        t0 = time.perf_counter_ns()
        n = len(os.pread(fd, BLOCK, off))
        took.append((time.perf_counter_ns() - t0) / 1000)
        if n != BLOCK:
            sys.exit(f"{path}: short read of {n} bytes at {off}")
    os.close(fd)
    took.sort()
    median = took[len(took) // 2]
    p99 = took[min(len(took) - 1, (len(took) * 99) // 100)]
    print(f"{median:.0f} {p99:.0f}")


if __name__ == "__main__":
    main()
