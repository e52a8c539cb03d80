#!/usr/bin/env bash
# engine_syscalls.sh -- the engine loop thread's system calls per batch and
# the kernel's share of its time: `bench engine --instances 2000 --events
# 200 --batch 256` runs, and 2 s into the drive its main thread (the loop:
# engine, store writer) is traced for 1.5 s by `strace` (counts, not times:
# strace slows each call) or, with --perf, sampled for 2 s by `perf record
# -e cpu-clock -F 10000` (the share of samples in the kernel, and its
# largest symbols). Batches are the loop turns between two epoll_wait that
# take the WAL's write lock (fcntl F_WRLCK on the -shm's byte 120).
# usage: engine_syscalls.sh [--perf] CAREMESH
set -euo pipefail
perf=false
[ "${1:-}" = --perf ] && { perf=true; shift; }
[ $# -eq 1 ] && [ -x "$1" ] || { echo "usage: engine_syscalls.sh [--perf] CAREMESH" >&2; exit 2; }
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" bench engine --instances 2000 --events 200 --batch 256 >"$tmp/bench" 2>&1 &
pid=$!
sleep 2
if $perf; then
  perf record -q -e cpu-clock -F 10000 -t "$pid" -o "$tmp/perf.data" -- sleep 2 >/dev/null 2>&1
else
  timeout -s INT 1.5 strace -p "$pid" -o "$tmp/trace" \
    -e trace=pwrite64,pwritev,fcntl,futex,write,pread64,fdatasync,epoll_wait 2>/dev/null || true
fi
wait "$pid" || { echo "engine_syscalls.sh: the bench failed: $(tail -1 "$tmp/bench")" >&2; exit 1; }
echo "load $(cut -d' ' -f1 /proc/loadavg)"
tail -1 "$tmp/bench"
if $perf; then
  perf report -i "$tmp/perf.data" --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9.]+%'
  perf report -i "$tmp/perf.data" --sort sym --stdio 2>/dev/null | grep -E '\[k\]' | head -8
else
  awk '
    /^epoll_wait/ { if (w) { n++; P += pw; F += fc; X += fx; R += pr; S += sy } pw = fc = fx = pr = sy = w = 0; next }
    /^pwrite64|^pwritev/ { pw++; next }
    /^fcntl/ { fc++; if ($0 ~ /F_WRLCK.*l_start=120,/) w = 1; next }
    /^futex/ { fx++; next }
    /^pread64/ { pr++; next }
    /^fdatasync/ { sy++; next }
    END { if (!n) { print "no batch traced"; exit 1 }
          printf "%d batches traced; per batch: pwrite64/pwritev %.1f, fcntl %.1f, futex %.1f, pread64 %.1f, fdatasync %.2f\n", n, P/n, F/n, X/n, R/n, S/n }' "$tmp/trace"
fi
