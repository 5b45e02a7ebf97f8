#!/usr/bin/env python3
"""Turn the raw timings of bench/run.sh into the markdown of bench/RESULTS.md.

  report.py TIMES.tsv SIZES.tsv META.txt [LATENCY.tsv [TAPE.tsv]] > RESULTS.md

TIMES.tsv: key, repetition, wall time in microseconds, peak RSS in KiB, and CPU time
(user + system) in microseconds (absent in files from older runs).
SIZES.tsv: tool, repository bytes after the incremental backup (first repetition).
META.txt: key=value lines about the machine and the tool versions.
LATENCY.tsv: key, repetition, median and 99th percentile of single reads in
microseconds (random 4 KiB reads of a mounted image).
TAPE.tsv: repetition, the drive's busy share in % and its stops, of each full send to
the virtual tape library.
"""
import statistics
import sys
from collections import defaultdict

times = defaultdict(list)
rss = defaultdict(list)
cpu = defaultdict(list)
for line in open(sys.argv[1]):
    key, _rep, us, kib, *rest = line.rstrip("\n").split("\t")
    times[key].append(int(us) / 1e6)
    rss[key].append(int(kib))
    if rest:
        cpu[key].append(int(rest[0]) / 1e6)
sizes = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip())
meta = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[3]) if "=" in l)
latency = defaultdict(list)
if len(sys.argv) > 4:
    for line in open(sys.argv[4]):
        key, _rep, median_us, p99_us = line.rstrip("\n").split("\t")
        latency[key].append((float(median_us), float(p99_us)))
tape = []
if len(sys.argv) > 5:
    for l in open(sys.argv[5]):
        if l.strip():
            _rep, busy, stops = l.split("\t")
            tape.append((int(busy), int(stops)))


def med(key):
    return statistics.median(times[key])


def fmt_s(x):
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def cpu_s(key):
    return fmt_s(statistics.median(cpu[key])) if cpu[key] else "–"


def row(op, label, key, ref):
    t = times[key]
    if not t:
        return f"| {op} | {label} | – | – | – | – | – |"
    if key == ref:
        ratio = "1.00"
    elif times[ref]:
        ratio = f"{med(key) / med(ref):.2f}"
    else:
        ratio = "–"
    return (
        f"| {op} | {label} | {fmt_s(med(key))} | {fmt_s(min(t))}–{fmt_s(max(t))} "
        f"| {cpu_s(key)} | {max(rss[key]) / 1024:.0f} | {ratio} |"
    )


HEAD = (
    "| operation | tool and command | median s | min–max s | CPU s | peak RSS MiB | ratio to sparsebak |\n"
    "|---|---|---:|---:|---:|---:|---:|"
)

peers_1g = [
    (
        "full backup",
        "sbk.full",
        [
            ("**sparsebak** `send` (first)", "sbk.full"),
            ("(extra) sparsebak `send` (first), `compression = zstd:1`", "sbk_z1.full"),
            ("(extra) sparsebak `send` (first), `compression = zstd:2`", "sbk_z2.full"),
            ("(extra) sparsebak `send` (first), `compression = none`", "sbk_none.full"),
            ("(extra) sparsebak `send` (first), `tarfile = on`", "sbk_tar.full"),
            ("(extra) sparsebak `send` (first), `chunksize = 4M`", "sbk_c4m.full"),
            ("(extra) sparsebak `send` (first), not encrypted, run beside the encrypted row", "sbk_twin.full"),
            ("(extra) sparsebak `send` (first), encrypted", "sbk_enc.full"),
            ("(extra) sparsebak `send --dest=TAPE` (first), virtual drive at 300 MB/s", "sbk_tape.full"),
            ("(extra) sparsebak `send` (first) over ssh to 127.0.0.1", "sbk_ssh.full"),
            ("borg fixed,65536 `create`", "borg_fixed.full"),
            ("(extra) borg fixed,65536 `create --compression zstd,3`", "borg_fixed_zstd3.full"),
            ("borg default chunker `create`", "borg_default.full"),
            ("restic `backup`", "restic.full"),
            ("baseline `openssl dgst -sha256`", "baseline.sha256"),
            ("baseline `cp --reflink=never`", "baseline.cp"),
        ],
    ),
    (
        "incremental, 1 % changed",
        "sbk.inc",
        [
            ("**sparsebak** `send`", "sbk.inc"),
            ("(extra) sparsebak `send` over ssh to 127.0.0.1", "sbk_ssh.inc"),
            ("borg fixed,65536 `create`", "borg_fixed.inc"),
            ("borg default chunker `create`", "borg_default.inc"),
            ("restic `backup`", "restic.inc"),
        ],
    ),
    (
        "restore latest",
        "sbk.receive",
        [
            ("**sparsebak** `receive`", "sbk.receive"),
            ("(extra) sparsebak `receive`, sessions stored as tar (`tarfile = on`)", "sbk_tar.receive"),
            ("(extra) sparsebak `receive`, `chunksize = 4M`", "sbk_c4m.receive"),
            ("(extra) sparsebak `receive`, not encrypted, run beside the encrypted row", "sbk_twin.receive"),
            ("(extra) sparsebak `receive`, encrypted", "sbk_enc.receive"),
            ("(extra) sparsebak `receive --dest=TAPE`, virtual drive at 300 MB/s", "sbk_tape.receive"),
            ("(extra) sparsebak `receive` over ssh from 127.0.0.1", "sbk_ssh.receive"),
            ("borg fixed,65536 `extract --sparse`", "borg_fixed.extract"),
            ("borg default chunker `extract --sparse`", "borg_default.extract"),
            ("restic `restore`", "restic.restore"),
        ],
    ),
    (
        "verify all data",
        "sbk.verify",
        [
            ("**sparsebak** `verify`", "sbk.verify"),
            ("(extra) sparsebak `verify`, sessions stored as tar (`tarfile = on`)", "sbk_tar.verify"),
            ("(extra) sparsebak `verify`, `chunksize = 4M`", "sbk_c4m.verify"),
            ("(extra) sparsebak `verify`, not encrypted, run beside the encrypted row", "sbk_twin.verify"),
            ("(extra) sparsebak `verify`, encrypted", "sbk_enc.verify"),
            ("borg fixed,65536 `check --verify-data`", "borg_fixed.check"),
            ("borg default chunker `check --verify-data`", "borg_default.check"),
            ("restic `check --read-data`", "restic.check"),
        ],
    ),
]

own = [
    ("1 GiB", "prune one session (the full one)", "sbk.prune"),
    ("1 GiB", "monitor, nothing changed", "sbk.monitor_idle"),
    ("1 GiB", "monitor after a 1 % change", "sbk.monitor_changed"),
    ("1 TiB sparse", "send, full", "sbk1t.full"),
    ("1 TiB sparse", "send, incremental after a 1 % change", "sbk1t.inc"),
    ("1 TiB sparse", "monitor, nothing changed", "sbk1t.monitor_idle"),
    ("1 TiB sparse", "receive latest (into a sparse file)", "sbk1t.receive"),
    ("1 TiB sparse", "verify", "sbk1t.verify"),
    ("1 TiB sparse", "prune one session (the full one)", "sbk1t.prune"),
]

out = []
p = out.append
p("# sparsebak benchmark results")
p("")
p(f"- date: {meta.get('date')}")
p(f"- CPU: {meta.get('cpu')}, {meta.get('cores')} cores; memory {meta.get('mem')}; kernel {meta.get('kernel')}")
p(
    f"- versions: {meta.get('sparsebak')}; {meta.get('borg')}; {meta.get('restic')}; "
    f"{meta.get('openssl')}; xfsprogs {meta.get('xfs')}"
)
p(
    f"- {meta.get('reps')} repetitions of every measurement, cold cache (sync and drop_caches "
    f"before each command; each time includes a final `sync`); whole run {meta.get('elapsed')} s"
)
p("- data and every repository on one loop-mounted XFS (reflink=1); see bench/README.md")
p(
    f"- load average (1, 5, 15 min): {meta.get('load')}; other jobs sharing the cores "
    "make times noisy, CPU-bound rows most (see min–max)"
)
p("")
p("## 1 GiB mixed image: sparsebak and its peers")
p("")
p(HEAD)
for op, ref, rows in peers_1g:
    for label, key in rows:
        p(row(op, label, key, ref))
p("")
p("Ratio = median of the row / median of sparsebak for the same operation (above 1: sparsebak is faster).")
p(
    f"CPU s = median user + system time of the command; on {meta.get('cores')} cores a command "
    "cannot take less wall time than CPU s / cores. Kernel threads (the loop device, writeback) "
    "are not counted in it."
)
p("")
p("## sparsebak only")
p("")
p("| image | operation | median s | min–max s | CPU s | peak RSS MiB |")
p("|---|---|---:|---:|---:|---:|")
for img, op, key in own:
    t = times[key]
    if t:
        p(
            f"| {img} | {op} | {fmt_s(med(key))} | {fmt_s(min(t))}–{fmt_s(max(t))} "
            f"| {cpu_s(key)} | {max(rss[key]) / 1024:.0f} |"
        )
p("")
if sizes:
    p("## Repository size after full + incremental (first repetition)")
    p("")
    p("| tool | MiB |")
    p("|---|---:|")
    for k, v in sizes.items():
        p(f"| {k} | {int(v) / 2**20:.0f} |")
    p("")

if times["sbk_mount.seq"]:
    p("## Mounted images (`sparsebak mount`)")
    p("")
    p("Sequential read: `dd bs=1M` of the mounted image of the latest session (cold caches, "
      "the session's index built on open), against `receive` of the same session into a file. "
      "Random reads: 800 reads of 4 KiB at random offsets of a fresh mount, cold (nothing "
      "cached), then warm (the same offsets after dropping the kernel's caches: from the "
      "mount's chunk cache, 64 MiB by default).")
    p("")
    p("| read | median s | min–max s | MiB/s | peak RSS MiB |")
    p("|---|---:|---:|---:|---:|")
    mib = int(meta.get("image_mib", "1024") or 1024)
    for label, key, serve in [
        ("`receive` of the session", "sbk_mount.receive", "sbk_mount.receive"),
        ("sequential read of the mounted image", "sbk_mount.seq", "sbk_mount.serve_seq"),
    ]:
        t = times[key]
        if t:
            p(
                f"| {label} | {fmt_s(med(key))} | {fmt_s(min(t))}–{fmt_s(max(t))} "
                f"| {mib / med(key):.0f} | {max(rss[serve]) / 1024:.0f} |"
            )
    p("")
    p("| random 4 KiB reads | median µs | p99 µs |")
    p("|---|---:|---:|")
    for label, key in [("cold", "sbk_mount.rand4k_cold"), ("warm", "sbk_mount.rand4k_warm")]:
        if latency[key]:
            p(
                f"| {label} | {statistics.median(m for m, _ in latency[key]):.0f} "
                f"| {statistics.median(q for _, q in latency[key]):.0f} |"
            )
    p("")

# ------------------------------------------------------------------ targets
def m_or_nan(key):
    return med(key) if times[key] else float("nan")


def ratio(a, b):
    return m_or_nan(a) / m_or_nan(b)


targets = []


def target(text, value, ok):
    targets.append(f"| {text} | {value} | {'met' if ok else '**not met**'} |")


r = ratio("borg_fixed.full", "sbk.full")
target("full send ≥ 3x faster than borg fixed-64K", f"{r:.2f}x", r >= 3)
r = ratio("sbk.full", "baseline.sha256")
target("full send within 1.25x of `openssl dgst -sha256`", f"{r:.2f}x the time", r <= 1.25)
for peer, name in [("borg_fixed.inc", "borg fixed-64K"), ("borg_default.inc", "borg default"), ("restic.inc", "restic")]:
    r = ratio(peer, "sbk.inc")
    target(f"incremental ≥ 20x faster than {name}", f"{r:.1f}x", r >= 20)
r = ratio("sbk1t.inc", "sbk.inc")
target("incremental on 1 TiB sparse within 2x of 1 GiB", f"{r:.2f}x", r <= 2)
r = ratio("borg_fixed.extract", "sbk.receive")
target("receive ≥ 5x faster than borg extract (fixed-64K)", f"{r:.2f}x", r >= 5)
r = ratio("borg_fixed.check", "sbk.verify")
target("verify ≥ 5x faster than borg check --verify-data (fixed-64K)", f"{r:.2f}x", r >= 5)
peak = max((max(v), k) for k, v in rss.items() if k.startswith("sbk") and not k.startswith("sbk_tape."))
target("peak RSS of every sparsebak command < 128 MiB (tape sends: below)", f"{peak[0] / 1024:.0f} MiB ({peak[1]})", peak[0] < 128 * 1024)
if rss["sbk_tape.full"]:
    # A send to tape holds the configured tape buffer (`buffer`, 256 MiB by default)
    # on top of what any send holds.
    p_tape = max(rss["sbk_tape.full"])
    target(
        "peak RSS of a send to tape < 128 MiB + its buffer (256 MiB)",
        f"{p_tape / 1024:.0f} MiB",
        p_tape < (128 + 256) * 1024,
    )
for prefix, key, limit, what in [
    ("sbk_ssh", "full", 1.3, "full send over ssh to 127.0.0.1 within 1.3x of the local send"),
    ("sbk_ssh", "inc", 2.0, "incremental (1 %) over ssh within 2x of the local one"),
    ("sbk_ssh", "receive", 1.3, "receive over ssh within 1.3x of the local receive"),
]:
    r = ratio(f"{prefix}.{key}", f"sbk.{key}")
    target(what, f"{r:.2f}x the time", r <= limit)
# Encryption against its plain twin: the same settings and steps, each operation run
# right beside the encrypted one (see run.sh, enc_rows).
for key, limit, what in [
    ("full", 1.10, "encrypted full send within 1.10x of the plain one"),
    ("receive", 1.15, "encrypted receive within 1.15x of the plain one"),
    ("verify", 1.15, "encrypted verify within 1.15x of the plain one"),
]:
    r = ratio(f"sbk_enc.{key}", f"sbk_twin.{key}")
    target(f"{what} (its twin)", f"{r:.2f}x the time", r <= limit)
far = [(max(v), k[4:]) for k, v in rss.items() if k.startswith("far:")]
if far:
    peak = max(far)
    target("peak RSS of the far side (`sparsebak serve`) < 128 MiB", f"{peak[0] / 1024:.0f} MiB ({peak[1]})", peak[0] < 128 * 1024)
if tape:
    worst_busy = min(b for b, _ in tape)
    worst_stops = max(s for _, s in tape)
    target(
        "full send to tape (virtual drive at 300 MB/s): drive busy ≥ 95 % of the time",
        f"{worst_busy} % (lowest of {len(tape)})",
        worst_busy >= 95,
    )
    target(
        "full send to tape: at most 2 stops of the drive",
        f"{worst_stops} (most of {len(tape)})",
        worst_stops <= 2,
    )
r = ratio("sbk_mount.receive", "sbk_mount.seq")
target(
    "sequential read of a mounted 1 GiB image ≥ 70 % of `receive`'s throughput",
    f"{r * 100:.0f} %",
    r >= 0.7,
)
m = m_or_nan("sbk1t.monitor_idle")
target("monitor of 1 TiB, nothing changed, < 0.2 s", f"{m:.3f} s", m < 0.2)

p("## Targets")
p("")
p("| target | measured (medians) | |")
p("|---|---:|---|")
out.extend(targets)

# ------------------------------------------------------------------ bounds
# For the targets about whole-image work: the time a target allows, next to times of
# this same run that no implementation of the operation can beat on this machine, or
# that show what the operation is bound by.
cores = int(meta.get("cores", "1") or 1)


def per_core(key):
    return statistics.median(cpu[key]) / cores if cpu[key] else float("nan")


bounds = [
    (
        "full send ≥ 3x faster than borg fixed-64K",
        m_or_nan("borg_fixed.full") / 3,
        [
            (f"sparsebak `send` (first): CPU s / {cores} cores", per_core("sbk.full")),
            ("sparsebak `send` (first) with `compression = none`", m_or_nan("sbk_none.full")),
        ],
    ),
    (
        "full send within 1.25x of `openssl dgst -sha256`",
        m_or_nan("baseline.sha256") * 1.25,
        [
            (f"sparsebak `send` (first): CPU s / {cores} cores", per_core("sbk.full")),
            ("sparsebak `send` (first) with `compression = none`", m_or_nan("sbk_none.full")),
            ("`cp --reflink=never` of the image", m_or_nan("baseline.cp")),
        ],
    ),
    (
        "receive ≥ 5x faster than borg extract (fixed-64K)",
        m_or_nan("borg_fixed.extract") / 5,
        [
            (
                "`cp --reflink=never` of the image × 0.75 (receive writes only the chunks "
                "that are not zero, about 75 % of this image)",
                m_or_nan("baseline.cp") * 0.75,
            ),
            (
                f"`openssl dgst -sha256` of the image / {cores} cores × 0.75 (receive "
                "checks the hash of every chunk it writes)",
                m_or_nan("baseline.sha256") / cores * 0.75,
            ),
        ],
    ),
    (
        "verify ≥ 5x faster than borg check --verify-data (fixed-64K)",
        m_or_nan("borg_fixed.check") / 5,
        [
            (
                f"`openssl dgst -sha256` of the image / {cores} cores × 0.75 (verify hashes "
                "only the chunks that are not zero, about 75 % of this image)",
                m_or_nan("baseline.sha256") / cores * 0.75,
            ),
            (f"sparsebak `verify`: CPU s / {cores} cores", per_core("sbk.verify")),
        ],
    ),
]
p("")
p("## What the whole-image targets allow, and what this run measured")
p("")
p("| target | time it allows, s | measured in this run | s |")
p("|---|---:|---|---:|")
for text, budget, evidence in bounds:
    for i, (label, value) in enumerate(evidence):
        head = f"| {text} | {budget:.3f} |" if i == 0 else "| | |"
        p(f"{head} {label} | {value:.3f} |")
p("")
p(
    "A command that uses C CPU seconds cannot finish in less than C / cores of wall time. "
    "`compression = none` leaves only reading, hashing and writing; `cp` only reading and "
    "writing; `openssl dgst` only reading and hashing, on one core (divided by the cores, "
    "it is hashing spread perfectly over all of them). The 0.75 rows scale a baseline to "
    "the part of the image that is data; they are estimates, not measurements."
)
print("\n".join(out))
