#!/bin/sh
# Run one benchmark command on a phone or board and write ONE result file.
#
# POSIX sh for Android's toybox/mksh, busybox ash and dash/bash with coreutils: no arrays, no [[ ]], no local,
# external tools limited to cat, date, mv, rm, sleep, tr and (for --cores) taskset.
#
# usage: run_bench.sh --result FILE [--output FILE] [--workdir DIR] [--cores all|big|fastest]
#                     [--cool-below DEG_C] [--cool-max-wait SECONDS] [--sample-interval SECONDS] -- COMMAND [ARG...]
#
#   --result FILE        key=value lines written atomically (FILE.tmp.PID, then mv) when COMMAND has finished
#   --output FILE        COMMAND's stdout and stderr (default: FILE.out next to the result)
#   --workdir DIR        COMMAND runs in this folder (default: the current one)
#   --cores big          pin to the CPUs faster than the slowest cluster (by cpu_capacity, else cpufreq's
#                        cpuinfo_max_freq; every CPU on a homogeneous board; see pick_cpus); "fastest" pins to the
#                        top cluster only; "all" (default) does not pin. Pinning uses taskset with a hex mask.
#                        Nothing to tell the cores apart, or no taskset: runs unpinned and says why (pin_note).
#   --cool-below DEG_C   before running, wait until every thermal zone reads below DEG_C (default: no wait);
#                        with no thermal zone to read it does not wait and says so (cool_note)
#   --cool-max-wait S    give up waiting after S seconds (default 120) and run anyway (recorded)
#   --sample-interval S  how often VmHWM is read from /proc/PID/status while COMMAND runs (default 0.1)
#
# LITESHIP_SYSFS (default /sys) is where cpu_capacity, cpufreq and thermal zones are read, for boards that mount sysfs
# elsewhere and for tests. Exit status: 0 when the result file was written (COMMAND's own status is in it),
# 2 on bad arguments.

set -u

SYSFS=${LITESHIP_SYSFS:-/sys}
result=""
output=""
workdir=""
cores="all"
cool_below=""
cool_max_wait=120
interval=0.1

die() {
    echo "run_bench.sh: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --result) [ $# -ge 2 ] || die "--result needs a file"; result=$2; shift 2 ;;
        --output) [ $# -ge 2 ] || die "--output needs a file"; output=$2; shift 2 ;;
        --workdir) [ $# -ge 2 ] || die "--workdir needs a folder"; workdir=$2; shift 2 ;;
        --cores) [ $# -ge 2 ] || die "--cores needs all, big or fastest"; cores=$2; shift 2 ;;
        --cool-below) [ $# -ge 2 ] || die "--cool-below needs degrees C"; cool_below=$2; shift 2 ;;
        --cool-max-wait) [ $# -ge 2 ] || die "--cool-max-wait needs seconds"; cool_max_wait=$2; shift 2 ;;
        --sample-interval) [ $# -ge 2 ] || die "--sample-interval needs seconds"; interval=$2; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1 (the command goes after --)" ;;
    esac
done
[ -n "$result" ] || die "--result FILE is required"
[ $# -gt 0 ] || die "no command given after --"
[ -n "$output" ] || output="$result.out"
case "$cores" in all|big|fastest) ;; *) die "--cores must be all, big or fastest, not $cores" ;; esac
case "$cool_below" in ""|*[!0-9]*) [ -z "$cool_below" ] || die "--cool-below takes whole degrees C, not $cool_below" ;; esac
case "$cool_max_wait" in ""|*[!0-9]*) die "--cool-max-wait takes whole seconds, not $cool_max_wait" ;; esac

# One line "zone:type:millidegrees;..." for every readable zone (some kernels report whole degrees: scaled).
thermal_snapshot() {
    snap=""
    for zone in "$SYSFS"/class/thermal/thermal_zone*; do
        [ -r "$zone/temp" ] || continue
        t=$(cat "$zone/temp" 2>/dev/null) || continue
        is_number "$t" || continue
        [ "$t" -gt -1000 ] && [ "$t" -lt 1000 ] && t=$((t * 1000))
        type=$(cat "$zone/type" 2>/dev/null | tr -d ' ;:\n')
        snap="$snap${snap:+;}${zone##*/}:${type:-unknown}:$t"
    done
    echo "$snap"
}

# The hottest zone in whole degrees C, ignoring sensors that read <= 0 or >= 200 C (unused or broken ones).
hottest_c() {
    hot=""
    for zone in "$SYSFS"/class/thermal/thermal_zone*; do
        t=$(cat "$zone/temp" 2>/dev/null) || continue
        is_number "$t" || continue
        [ "$t" -gt -1000 ] && [ "$t" -lt 1000 ] && t=$((t * 1000))
        [ "$t" -gt 0 ] && [ "$t" -lt 200000 ] || continue
        c=$((t / 1000))
        if [ -z "$hot" ] || [ "$c" -gt "$hot" ]; then hot=$c; fi
    done
    echo "$hot"
}

# One line "cpuN:cur_khz:max_khz;..." (empty fields where cpufreq is missing).
freq_snapshot() {
    snap=""
    for cpu in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
        [ -d "$cpu" ] || continue
        cur=$(cat "$cpu/cpufreq/scaling_cur_freq" 2>/dev/null)
        max=$(cat "$cpu/cpufreq/cpuinfo_max_freq" 2>/dev/null)
        snap="$snap${snap:+;}${cpu##*/}:$cur:$max"
    done
    echo "$snap"
}

# --- begin pick_cpus: the one "big cores" rule (device/probe.py runs this same function in its probe) ---------
is_number() {
    case "$1" in ""|*[!0-9-]*) return 1 ;; esac
    return 0
}

# pick_cpus big|fastest prints the CPUs of that policy as " n n n", or nothing when sysfs says nothing.
# A CPU's speed is its cpu_capacity (arm64: the scheduler's capacity, 1024 for the biggest core, from the core
# type and its top frequency) when those values tell the CPUs apart; else cpufreq's cpuinfo_max_freq (kernels
# without capacity-dmips-mhz in the device tree report 1024 everywhere, and x86 has no cpu_capacity).
# "big" is every CPU faster than the slowest tier (all of them when every CPU is alike): on a 4 little + 3 mid +
# 1 prime phone the 3 mid and the prime. "fastest" is the top tier alone: the prime core.
pick_cpus() {
    _pc_file=cpu_capacity
    _pc_low=""
    _pc_high=""
    for _pc_cpu in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
        _pc_v=$(cat "$_pc_cpu/cpu_capacity" 2>/dev/null) || continue
        is_number "$_pc_v" || continue
        if [ -z "$_pc_low" ] || [ "$_pc_v" -lt "$_pc_low" ]; then _pc_low=$_pc_v; fi
        if [ -z "$_pc_high" ] || [ "$_pc_v" -gt "$_pc_high" ]; then _pc_high=$_pc_v; fi
    done
    if [ -z "$_pc_low" ] || [ "$_pc_low" -eq "$_pc_high" ]; then
        _pc_file=cpufreq/cpuinfo_max_freq
        _pc_low=""
        _pc_high=""
        for _pc_cpu in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
            _pc_v=$(cat "$_pc_cpu/$_pc_file" 2>/dev/null) || continue
            is_number "$_pc_v" || continue
            if [ -z "$_pc_low" ] || [ "$_pc_v" -lt "$_pc_low" ]; then _pc_low=$_pc_v; fi
            if [ -z "$_pc_high" ] || [ "$_pc_v" -gt "$_pc_high" ]; then _pc_high=$_pc_v; fi
        done
    fi
    [ -n "$_pc_high" ] || return 0
    _pc_picked=""
    for _pc_cpu in "$SYSFS"/devices/system/cpu/cpu[0-9]*; do
        _pc_v=$(cat "$_pc_cpu/$_pc_file" 2>/dev/null) || continue
        is_number "$_pc_v" || continue
        _pc_n=${_pc_cpu##*/cpu}
        if [ "$1" = fastest ]; then
            [ "$_pc_v" -eq "$_pc_high" ] && _pc_picked="$_pc_picked $_pc_n"
        elif [ "$_pc_low" -eq "$_pc_high" ] || [ "$_pc_v" -gt "$_pc_low" ]; then
            _pc_picked="$_pc_picked $_pc_n"
        fi
    done
    echo "$_pc_picked"
}
# --- end pick_cpus -------------------------------------------------------------------------------------------

# --- cool down ----------------------------------------------------------------------------------------------
waited=0
timed_out=0
cool_note=""
if [ -n "$cool_below" ]; then
    while :; do
        hot=$(hottest_c)
        if [ -z "$hot" ]; then
            cool_note="no thermal zone to read in $SYSFS/class/thermal; did not wait"
            break
        fi
        [ "$hot" -lt "$cool_below" ] && break
        if [ "$waited" -ge "$cool_max_wait" ]; then
            timed_out=1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
fi

# --- pin ----------------------------------------------------------------------------------------------------
cpus="all"
mask=""
pinned=0
pin_note=""
if [ "$cores" != all ]; then
    picked=$(pick_cpus "$cores")
    if [ -z "$picked" ]; then
        pin_note="no cpu_capacity or cpufreq in $SYSFS/devices/system/cpu; not pinned"
    elif ! command -v taskset >/dev/null 2>&1; then
        pin_note="taskset not found; not pinned"
    else
        m=0
        cpus=""
        for n in $picked; do
            m=$((m | (1 << n)))
            cpus="$cpus${cpus:+,}$n"
        done
        mask=$(printf '%x' "$m")
        pinned=1
    fi
fi

# --- run ----------------------------------------------------------------------------------------------------
thermal_before=$(thermal_snapshot)
freq_before=$(freq_snapshot)
command_line=$(printf '%s ' "$@" | tr '\n' ' ')
[ -z "$workdir" ] || cd "$workdir" || die "cannot enter --workdir $workdir"
started=$(date +%s)
if [ "$pinned" = 1 ]; then
    taskset "$mask" "$@" >"$output" 2>&1 &
else
    "$@" >"$output" 2>&1 &
fi
pid=$!
peak_kb=""
samples=0
# VmHWM only grows, so the last value read before the process is gone is its peak.
# An exited child stays a zombie (kill -0 still succeeds) until `wait` reaps it, hence the State check.
while :; do
    state=""
    if [ -r "/proc/$pid/status" ]; then
        while read -r key value _; do
            case "$key" in
                VmHWM:) peak_kb=$value ;;
                State:) state=$value ;;
            esac
        done <"/proc/$pid/status"
        samples=$((samples + 1))
    fi
    [ "$state" = Z ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep "$interval" 2>/dev/null || sleep 1
done
wait "$pid"
status=$?
finished=$(date +%s)
thermal_after=$(thermal_snapshot)
freq_after=$(freq_snapshot)

# --- the one result file ------------------------------------------------------------------------------------
tmp="$result.tmp.$$"
{
    printf 'schema=%s\n' "liteship.android_bench/1"
    printf 'status=%s\n' "$status"
    printf 'output=%s\n' "$output"
    printf 'command=%s\n' "$command_line"
    printf 'cores_policy=%s\n' "$cores"
    printf 'cpus=%s\n' "$cpus"
    printf 'cpu_mask=%s\n' "${mask:+0x$mask}"
    printf 'pinned=%s\n' "$pinned"
    printf 'pin_note=%s\n' "$pin_note"
    printf 'cool_below_c=%s\n' "$cool_below"
    printf 'cooldown_waited_s=%s\n' "$waited"
    printf 'cooldown_timed_out=%s\n' "$timed_out"
    printf 'cool_note=%s\n' "$cool_note"
    printf 'thermal_before=%s\n' "$thermal_before"
    printf 'thermal_after=%s\n' "$thermal_after"
    printf 'freq_before=%s\n' "$freq_before"
    printf 'freq_after=%s\n' "$freq_after"
    printf 'peak_rss_kb=%s\n' "$peak_kb"
    printf 'memory_samples=%s\n' "$samples"
    printf 'started=%s\n' "$started"
    printf 'finished=%s\n' "$finished"
} >"$tmp" || { rm -f "$tmp"; die "cannot write $tmp"; }
mv -f "$tmp" "$result" || { rm -f "$tmp"; die "cannot rename $tmp to $result"; }
exit 0
