#!/usr/bin/env bash
# Side-by-side start-to-exit latency: `vessel run` vs `crun run` vs `runc run` of
# /bin/true on the same busybox bundle (fixtures/config.json), alternating the three in
# every round so load changes hit them alike.
#
#   benches/run_vs_crun.sh [RUNS]      (default 50 rounds; needs root)
#
# Prints, per runtime, the median, p10/p90, min/max in ms, and the median ratio
# vessel/crun and vessel/runc.
#
# Conditions: Debian's crun refuses this hybrid-cgroup host while the cgroup2 mount at
# /sys/fs/cgroup/unified is visible, so the whole loop runs inside `unshare -m` with a
# tmpfs over that path — for all three runtimes, so they see the same cgroup layout
# (v1 only). Each runtime's cgroup goes below this script's own cgroup (crun reads a
# relative cgroupsPath from the hierarchy root, so it gets the equivalent absolute
# path); everything created is removed at the end.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/fixtures/lib.sh"
RUNS="${1:-50}"

need_pkgs crun runc
BUNDLE_SRC="$("$REPO/fixtures/busybox.sh")"
log "building vessel (release)"
(cd "$REPO" && cargo build -q --release -p vessel-bins --bin vessel)
VESSEL="$REPO/target/release/vessel"

TMP="$(mktemp -d /tmp/vessel-bench.XXXXXX)"
TAG="vessel-bench-$$"
OWN_MEM="$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)"
HIERS=()
for h in /sys/fs/cgroup/*/; do
  h="${h%/}"
  [ "$(basename "$h")" = unified ] && continue
  [ -e "$h/cgroup.procs" ] && HIERS+=("$h")
done
# Directories that may get created (deepest last), remembered if they did not exist yet.
CREATED=()
note_path() { # note_path REL: every prefix of REL below every v1 hierarchy
  local rel="$1" h p acc
  for h in "${HIERS[@]}"; do
    acc="$h"
    IFS=/ read -ra parts <<< "${rel#/}"
    for p in "${parts[@]}"; do
      [ -z "$p" ] && continue
      acc="$acc/$p"
      [ -e "$acc" ] || CREATED+=("$acc")
    done
  done
}
cleanup() {
  for rt in vessel crun runc; do
    for id in $(ls "$TMP/$rt-root" 2>/dev/null); do
      case $rt in
        vessel) "$VESSEL" --root "$TMP/$rt-root" delete -f "$id" ;;
        *) "$rt" --root "$TMP/$rt-root" delete -f "$id" ;;
      esac >/dev/null 2>&1 || true
    done
  done
  local i
  for ((i=${#CREATED[@]}-1; i>=0; i--)); do rmdir "${CREATED[$i]}" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

cp -a "$BUNDLE_SRC/rootfs" "$TMP/rootfs"
# The fixture lists ambient capabilities without inheritable ones; vessel refuses that
# (the kernel would not raise them), so make the config consistent for all three.
make_config() { # make_config DIR CGROUPS_PATH
  mkdir -p "$1"
  sed -e 's|"args": \["sh"\]|"args": ["/bin/true"]|' \
      -e 's|"ambient": \(\[[^]]*\]\)|"ambient": \1, "inheritable": \1|' \
      -e "s|\"path\": \"rootfs\"|\"path\": \"$TMP/rootfs\"|" \
      -e "s|\"linux\": {|\"linux\": { \"cgroupsPath\": \"$2\",|" \
      "$REPO/fixtures/config.json" > "$1/config.json"
}
make_config "$TMP/b-vessel" "$TAG/c"
make_config "$TMP/b-runc" "$TAG/c"
make_config "$TMP/b-crun" "$OWN_MEM/$TAG/c"
note_path "$TAG"
note_path "$OWN_MEM/$TAG"
mkdir -p "$TMP/vessel-root" "$TMP/crun-root" "$TMP/runc-root"

log "$RUNS rounds of vessel / crun / runc run /bin/true"
unshare -m --propagation private bash -s "$TMP" "$VESSEL" "$RUNS" <<'EOF'
set -euo pipefail
TMP="$1"; VESSEL="$2"; RUNS="$3"
mount -t tmpfs -o size=1m tmpfs /sys/fs/cgroup/unified
run_one() { # run_one RUNTIME ID → elapsed ms on stdout
  local rt="$1" id="$2" bin t0 t1
  bin="$rt"; [ "$rt" = vessel ] && bin="$VESSEL"
  t0=$EPOCHREALTIME
  "$bin" --root "$TMP/$rt-root" run --bundle "$TMP/b-$rt" "$id" >/dev/null 2>"$TMP/err" </dev/null \
    || { echo "$rt run failed: $(cat "$TMP/err")" >&2; exit 1; }
  t1=$EPOCHREALTIME
  echo "$(( (${t1/./} - ${t0/./}) ))" >> "$TMP/$rt.us"
}
# Warm-up (page cache, binaries), not counted.
for rt in vessel crun runc; do run_one "$rt" "warm-$rt"; done
rm -f "$TMP"/*.us
order=(vessel crun runc)
for ((i=0; i<RUNS; i++)); do
  for ((k=0; k<3; k++)); do
    rt="${order[$(( (i + k) % 3 ))]}"
    run_one "$rt" "b$i-$rt"
  done
done
EOF

printf '%-7s %8s %8s %8s %8s %8s %5s\n' runtime median p10 p90 min max runs
declare -A MED
for rt in vessel crun runc; do
  read -r med p10 p90 min max n < <(sort -n "$TMP/$rt.us" | awk '{v[NR]=$1} END {
      n=NR;
      printf "%.2f %.2f %.2f %.2f %.2f %d\n", v[int((n+1)/2)]/1000, v[int(n*0.1)+1]/1000,
             v[int(n*0.9)]/1000, v[1]/1000, v[n]/1000, n }')
  MED[$rt]="$med"
  printf '%-7s %8s %8s %8s %8s %8s %5s\n' "$rt" "$med" "$p10" "$p90" "$min" "$max" "$n"
done
awk -v v="${MED[vessel]}" -v c="${MED[crun]}" -v r="${MED[runc]}" \
  'BEGIN { printf "median ratio vessel/crun = %.2f, vessel/runc = %.2f\n", v/c, v/r }'
