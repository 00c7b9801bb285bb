#!/usr/bin/env bash
# Side-by-side cost of a live resource update from the command line: `vessel update` vs
# `runc update` on running containers made from the same config (busybox `sleep`, with
# memory/cpu/pids limits), alternating the two in every round.
#
#   benches/update_vs_runc.sh [RUNS]      (default 100 rounds; needs root)
#
# Two kinds of update, each changing values every round (so the kernel really writes):
#   flags  `update --memory M --cpu-quota Q --pids-limit P ID`
#   full   `update -r FILE ID` with a full linux.resources set (memory limit/reservation/
#          swap, cpu shares/quota/period/cpus/mems, pids)
# Prints, per runtime and kind, median / p10 / p90 in µs (whole process: exec, state
# load, cgroup writes, state save) and the median ratio vessel/runc.
#
# Each runtime's root is its own temp dir; the cgroups go below this script's own cgroup
# (relative cgroupsPath) and are removed at the end with the containers.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/fixtures/lib.sh"
RUNS="${1:-100}"

need_pkgs runc
BUNDLE_SRC="$("$REPO/fixtures/busybox.sh")"
log "building vessel (release)"
(cd "$REPO" && cargo build -q --release -p vessel-bins --bin vessel)
VESSEL="$REPO/target/release/vessel"

TMP="$(mktemp -d /tmp/vessel-upd-bench.XXXXXX)"
TAG="vessel-upd-bench-$$"
cleanup() {
  "$VESSEL" --root "$TMP/vessel-root" delete -f "upd-vessel" >/dev/null 2>&1 || true
  runc --root "$TMP/runc-root" delete -f "upd-runc" >/dev/null 2>&1 || true
  local h
  for h in /sys/fs/cgroup/*/; do
    # Only the parent made for this run (the runtimes remove their own leaves).
    while read -r d; do rmdir "$d" 2>/dev/null || true; done < <(
      find "$h" -maxdepth 8 -depth -type d -name "$TAG" 2>/dev/null)
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

cp -a "$BUNDLE_SRC/rootfs" "$TMP/rootfs"
make_config() { # make_config DIR CGROUPS_PATH
  mkdir -p "$1"
  sed -e 's|"args": \["sh"\]|"args": ["sleep", "100000"]|' \
      -e 's|"ambient": \(\[[^]]*\]\)|"ambient": \1, "inheritable": \1|' \
      -e "s|\"path\": \"rootfs\"|\"path\": \"$TMP/rootfs\"|" \
      -e "s|\"linux\": {|\"linux\": { \"cgroupsPath\": \"$2\",|" \
      -e 's|"resources": {|"resources": { "memory": {"limit": 268435456}, "cpu": {"shares": 1024, "quota": 100000, "period": 100000}, "pids": {"limit": 256},|' \
      "$REPO/fixtures/config.json" > "$1/config.json"
}
make_config "$TMP/b-vessel" "$TAG/vessel"
make_config "$TMP/b-runc" "$TAG/runc"
mkdir -p "$TMP/vessel-root" "$TMP/runc-root"
"$VESSEL" --root "$TMP/vessel-root" run -d --bundle "$TMP/b-vessel" upd-vessel </dev/null >/dev/null
runc --root "$TMP/runc-root" run -d --bundle "$TMP/b-runc" upd-runc </dev/null >/dev/null

full_json() { # full_json I → a full resource set whose values depend on I's parity
  local mem=$(( (128 + 64 * ($1 % 2)) * 1048576 ))
  cat <<JSON
{"memory": {"limit": $mem, "reservation": $((mem / 2)), "swap": $((mem * 2))},
 "cpu": {"shares": $((512 + 256 * ($1 % 2))), "quota": $((50000 + 10000 * ($1 % 2))),
         "period": 100000, "cpus": "0-1", "mems": "0"},
 "pids": {"limit": $((128 + $1 % 2))}}
JSON
}
full_json 0 > "$TMP/full0.json"
full_json 1 > "$TMP/full1.json"

one() { # one RUNTIME KIND I
  local rt="$1" kind="$2" i="$3" bin root id t0 t1
  if [ "$rt" = vessel ]; then bin="$VESSEL"; else bin=runc; fi
  root="$TMP/$rt-root"; id="upd-$rt"
  local -a args
  if [ "$kind" = flags ]; then
    args=(update --memory "$((96 + i % 2))m" --cpu-quota "$((20000 + 1000 * (i % 2)))"
          --pids-limit "$((64 + i % 2))" "$id")
  else
    args=(update -r "$TMP/full$((i % 2)).json" "$id")
  fi
  t0=$EPOCHREALTIME
  "$bin" --root "$root" "${args[@]}" >/dev/null 2>"$TMP/err" </dev/null \
    || { echo "$rt ${args[*]} failed: $(cat "$TMP/err")" >&2; exit 1; }
  t1=$EPOCHREALTIME
  echo "$(( ${t1/./} - ${t0/./} ))" >> "$TMP/$rt-$kind.us"
}

for kind in flags full; do one vessel "$kind" 0; one runc "$kind" 0; done # warm-up
rm -f "$TMP"/*.us
log "$RUNS rounds of vessel / runc update (flags and full set)"
for ((i = 1; i <= RUNS; i++)); do
  for kind in flags full; do
    if ((i % 2)); then one vessel "$kind" "$i"; one runc "$kind" "$i"
    else one runc "$kind" "$i"; one vessel "$kind" "$i"; fi
  done
done

# Both applied the last values: check one of them on each side.
last_mem=$(( (128 + 64 * (RUNS % 2)) * 1048576 ))
for rt in vessel runc; do
  f="$(find /sys/fs/cgroup/memory -path "*/$TAG/$rt" -type d | head -1)/memory.limit_in_bytes"
  [ "$(cat "$f")" = "$last_mem" ] || { echo "$rt: $f is $(cat "$f"), want $last_mem" >&2; exit 1; }
done

printf '%-7s %-6s %9s %9s %9s %5s\n' runtime update median p10 p90 runs
declare -A MED
for kind in flags full; do
  for rt in vessel runc; do
    read -r med p10 p90 n < <(sort -n "$TMP/$rt-$kind.us" | awk '{v[NR]=$1} END {
        n=NR; printf "%d %d %d %d\n", v[int((n+1)/2)], v[int(n*0.1)+1], v[int(n*0.9)], n }')
    MED[$rt-$kind]="$med"
    printf '%-7s %-6s %7s µs %6s µs %6s µs %5s\n' "$rt" "$kind" "$med" "$p10" "$p90" "$n"
  done
  awk -v v="${MED[vessel-$kind]}" -v r="${MED[runc-$kind]}" -v k="$kind" \
    'BEGIN { printf "median ratio vessel/runc (%s) = %.2f\n", k, v/r }'
done
