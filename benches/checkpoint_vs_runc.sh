#!/usr/bin/env bash
# Side-by-side checkpoint and restore time: `vessel checkpoint/restore` vs
# `runc --criu CRIU checkpoint/restore` on the same busybox bundle and the same CRIU
# (fixtures/criu.sh), for a container with 16 MiB and 256 MiB of touched memory; plus
# vessel's live-migration downtime between two state roots (`vessel migrate`).
#
#   benches/checkpoint_vs_runc.sh [RUNS] [SIZES...]   (default 3 rounds, 16 256 MiB; root)
#
# The memory: `dd if=/dev/urandom bs=N M count=1 iflag=fullblock | sleep` — dd fills one
# N MiB buffer with random bytes (touched, incompressible anonymous memory) and blocks
# writing it to a pipe nobody reads. Containers get pipes as stdio (CRIU cannot dump host
# files). Both runtimes use a relative cgroupsPath (below this script's own cgroups),
# removed at the end. The runtimes alternate within every round. Prints median ms per
# runtime and operation (min-max over the rounds) and the vessel/runc ratio.
# Both runtimes write CRIU's logs to a --work-path; a failing command stops the run with
# its stderr and the error lines of the CRIU log (runc's half once died silently here).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/fixtures/lib.sh"
RUNS="${1:-3}"
shift || true
SIZES=("${@:-16 256}")
read -r -a SIZES <<< "${SIZES[*]}"

need_pkgs runc python3
CRIU="$("$REPO/fixtures/criu.sh")"
BUNDLE_SRC="$("$REPO/fixtures/busybox.sh" 2>/dev/null | tail -1 || true)"
[ -d "$BUNDLE_SRC/rootfs" ] || BUNDLE_SRC="$CACHE/bundle"
if [ -n "${VESSEL_BIN:-}" ]; then
  VESSEL="$VESSEL_BIN"   # e.g. a debug build: CRIU dominates both sides anyway
else
  log "building vessel (release)"
  (cd "$REPO" && cargo build -q --release -p vessel-bins --bin vessel)
  VESSEL="$REPO/target/release/vessel"
fi
export VESSEL_CRIU="$CRIU"
# runc 1.1 takes --criu; later runc ignore it and look criu up in PATH. Bookworm's own
# criu 3.17 (if installed) cannot run on this kernel, so the fixture's comes first.
export PATH="$(dirname "$CRIU"):$PATH"

TMP="$(mktemp -d /tmp/vessel-ckbench.XXXXXX)"
TAG="vessel-ckbench-$$"
# Pipes for the containers' stdio, held by this script.
exec 7< <(exec sleep 100000)
IN_PID=$!
exec 8> >(exec cat > /dev/null)
OUT_PID=$!

cleanup() {
  set +e
  for r in "$TMP"/root-*; do
    [ -d "$r" ] || continue
    for id in $(ls "$r" 2>/dev/null); do
      "$VESSEL" --root "$r" delete -f "$id" >/dev/null 2>&1
      runc --root "$r" delete -f "$id" >/dev/null 2>&1
    done
  done
  for h in /sys/fs/cgroup/*/; do
    own="$(awk -F: -v c="$(basename "$h")" '$2==c{print $3}' /proc/self/cgroup)"
    d="${h%/}${own%/}/$TAG"
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  kill "$IN_PID" "$OUT_PID" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

make_bundle() { # make_bundle DIR SIZE_MIB RUNTIME
  mkdir -p "$1"
  cp -a "$BUNDLE_SRC/rootfs" "$1/"
  python3 - "$REPO/fixtures/config.json" "$1/config.json" "$2" "$TAG/$3" <<'PY'
import json, sys
src, dst, size, cg = sys.argv[1:]
c = json.load(open(src))
caps = c["process"]["capabilities"]
caps["inheritable"] = caps.get("ambient", [])
c["process"]["args"] = ["sh", "-c",
    f"dd if=/dev/urandom bs={size}M count=1 iflag=fullblock 2>/dev/null | sleep 100000"]
c["linux"]["cgroupsPath"] = cg
json.dump(c, open(dst, "w"), indent=1)
PY
}

rss_kb() { # total VmRSS of the processes in the pid namespace of PID
  local ns p total=0 kb
  ns="$(readlink "/proc/$1/ns/pid")"
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
    kb="$(awk '/^VmRSS/{print $2}' "$p/status" 2>/dev/null)"
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

state_pid() { "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

wait_touched() { # wait_touched PID SIZE_MIB
  local i
  for i in $(seq 1 600); do
    [ "$(rss_kb "$1")" -ge $(( $2 * 1024 )) ] && return 0
    sleep 0.1
  done
  echo "memory never reached $2 MiB" >&2
  return 1
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# timed VAR WORKDIR CMD...: runs CMD (stderr to WORKDIR/stderr), adds its time in ms to
# VAR; on failure shows the runtime's stderr and the CRIU log it left in WORKDIR.
timed() {
  local var="$1" work="$2" t rc=0
  shift 2
  mkdir -p "$work"
  t=$(date +%s%N)
  "$@" 2>"$work/stderr" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "FAILED ($rc): $*" >&2
    sed 's/^/  stderr: /' "$work/stderr" >&2
    for l in "$work"/*.log; do
      [ -f "$l" ] || continue
      echo "  $l:" >&2
      grep -E 'Error|Warn' "$l" | grep -v RLIMIT_NOFILE | tail -15 | sed 's/^/    /' >&2
    done
    exit 1
  fi
  RES[$var]+="$(ms_since "$t") "
}

declare -A RES
run_one() { # run_one RUNTIME SIZE ROUND
  local rt="$1" size="$2" n="$3" root="$TMP/root-$1" b="$TMP/b-$1-$2" id="ck-$1-$2-$3"
  local img="$TMP/img-$1-$2-$3" work="$TMP/work-$1-$2-$3" cmd
  if [ "$rt" = vessel ]; then cmd=("$VESSEL" --root "$root"); else cmd=(runc --root "$root" --criu "$CRIU"); fi
  [ -d "$b" ] || make_bundle "$b" "$size" "$rt"
  "${cmd[@]}" run -d -b "$b" "$id" <&7 >&8 2>&8
  wait_touched "$(state_pid "${cmd[@]}" state "$id")" "$size"
  timed "$rt,$size,ck" "$work/ck" "${cmd[@]}" checkpoint --image-path "$img" \
    --work-path "$work/ck" "$id" </dev/null >&8
  # The restored init gets the restoring process's stdio in place of its pipes: the
  # script's pipes again (never a host file, never a command substitution's pipe).
  timed "$rt,$size,rs" "$work/rs" "${cmd[@]}" restore -d --image-path "$img" \
    --work-path "$work/rs" -b "$b" "$id" <&7 >&8
  [ "$(rss_kb "$(state_pid "${cmd[@]}" state "$id")")" -ge $(( size * 1024 )) ] \
    || echo "warning: $rt restored with less than $size MiB resident" >&2
  "${cmd[@]}" delete -f "$id"
  rm -rf "$img" "$work"
}

migrate_one() { # migrate_one SIZE ROUND
  local size="$1" n="$2" b="$TMP/b-vessel-$1" id="mig-$1-$2" out
  "$VESSEL" --root "$TMP/root-A" run -d -b "$b" "$id" <&7 >&8 2>&8
  wait_touched "$(state_pid "$VESSEL" --root "$TMP/root-A" state "$id")" "$size"
  # The report goes to a file: the migrated container inherits migrate's stdout (as a
  # restore's), so a $(...) capture would wait for it forever.
  "$VESSEL" --root "$TMP/root-A" migrate --to-root "$TMP/root-B" -b "$b" \
    --work-dir "$TMP/mig" "$id" <&7 >"$TMP/mig.out" 2>&8
  out="$(cat "$TMP/mig.out")"
  RES[migrate,$size]+="$(echo "$out" | sed -n 's/^downtime: \([0-9.]*\) ms.*/\1/p') "
  [ "$n" = 1 ] && echo "$out" | sed 's/^/    /' >&2
  "$VESSEL" --root "$TMP/root-B" delete -f "$id"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
spread() { tr ' ' '\n' | grep -v '^$' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END{print lo "-" hi}'; }

for size in "${SIZES[@]}"; do
  for n in $(seq 1 "$RUNS"); do
    log "size $size MiB, round $n"
    run_one vessel "$size" "$n"
    run_one runc "$size" "$n"
    migrate_one "$size" "$n"
  done
done

printf '\n%-8s %-10s %10s %13s %10s %13s %7s\n' "memory" "operation" "vessel ms" "(min-max)" \
  "runc ms" "(min-max)" "ratio"
for size in "${SIZES[@]}"; do
  for op in ck rs; do
    v="$(echo "${RES[vessel,$size,$op]}" | median)"
    r="$(echo "${RES[runc,$size,$op]}" | median)"
    name=$([ "$op" = ck ] && echo checkpoint || echo restore)
    printf '%-8s %-10s %10s %13s %10s %13s %7s\n' "${size}MiB" "$name" \
      "$v" "($(echo "${RES[vessel,$size,$op]}" | spread))" \
      "$r" "($(echo "${RES[runc,$size,$op]}" | spread))" \
      "$(awk -v a="$v" -v b="$r" 'BEGIN{printf "%.2f", a/b}')"
  done
  m="${RES[migrate,$size]}"
  printf '%-8s %-10s %10s %13s %10s\n' "${size}MiB" "migration" "$(echo "$m" | median)" \
    "($(echo "$m" | spread))" "-"
done
echo "(median of $RUNS rounds; migration = vessel downtime: final dump + transfer + restore; no pre-dumps on a kernel without soft-dirty)"
