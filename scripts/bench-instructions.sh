#!/usr/bin/env bash
# Instructions per delivery of `herald bench deliveries` on SQLite, counted by valgrind
# (cachegrind, no cache simulation): a measure of the pipeline's user-space work that repeats
# within about 2% (the same binary measured 718k, 725k and 731k), where deliveries/s and CPU time
# on these shared 2-core machines drift by 10% or more. Use it to compare two builds of a change
# too small to see in the timings.
#
# It runs the bench at two sizes and prints the difference divided by the extra deliveries: the
# marginal cost of one delivery plus one ceiling request (the bench sends the ceiling the same
# number of requests), with the fixed costs (migrations, argon2, TLS roots) left out. Kernel time
# (syscalls, the scheduler) is not counted, so it weighs SQLite and the Rust code more than a
# profile of wall-clock time does.
#
#   scripts/bench-instructions.sh target/quick/herald [target/quick/herald-other …]
#
# Needs valgrind (`apt-get install valgrind`); about 40 seconds a binary. SMALL_POSTS and
# LARGE_POSTS (500 and 1000) set the two sizes.
set -euo pipefail
small=${SMALL_POSTS:-500}
large=${LARGE_POSTS:-1000}
targets=5
count() { # binary posts -> instructions
    local out
    out=$(mktemp)
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
        "$1" bench deliveries --backend sqlite --rounds 1 --posts "$2" --targets $targets >/dev/null 2>"$out"
    grep -E 'I +refs:' "$out" | awk '{gsub(",", "", $4); print $4}'
    rm -f "$out"
}
for bin in "$@"; do
    a=$(count "$bin" "$small")
    b=$(count "$bin" "$large")
    extra=$(( (large - small) * targets ))
    echo "$bin: $(( (b - a) / extra )) instructions per delivery (+ one ceiling request); totals $a at $small posts, $b at $large"
done
