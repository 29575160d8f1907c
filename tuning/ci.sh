#!/usr/bin/env bash
# CI for tuning/: shellcheck on every script, systemd-analyze verify on every unit (any warning
# fails), self-tests of check and irq/affinity.sh against fake /proc and /sys trees, and (as root
# only) units-test.sh, which runs the router and the edge the way their units do.
# Needs shellcheck and systemd-analyze. Apart from units-test.sh (system users and group hyphae),
# changes nothing on the host.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

echo "shellcheck"
shellcheck -x check irq/affinity.sh lib/cpus.sh ci.sh units-test.sh

# systemd-analyze verify checks that ExecStart's binary exists: point a copy of each unit at its
# binary (hyphae-router or hyphae-edge) when it is built, else at an existing stand-in, so every
# other line is checked. The copies keep their names, so After=/Wants= between them resolve.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A bins
for unit in systemd/*.service; do
    name=${unit##*/}
    name=${name%.service}
    bin=$(command -v true)
    if [[ -x ../target/debug/$name ]]; then bin=$(cd ../target/debug && pwd)/$name; fi
    bins[$unit]=$bin
    sed -E "s|^(ExecStart(Pre)?=)/usr/local/bin/$name( \|$)|\1$bin\3|" "$unit" >"$tmp/${unit##*/}"
    if grep -q "^ExecStart[A-Za-z]*=/usr/local/bin/" "$tmp/${unit##*/}"; then
        echo "$unit: an ExecStart= line was not pointed at the built binary" >&2
        exit 1
    fi
done
for unit in systemd/*.service; do
    echo "systemd-analyze verify $unit (ExecStart -> ${bins[$unit]})"
    out=$(systemd-analyze verify "$tmp/${unit##*/}" 2>&1) || {
        echo "$out" >&2
        exit 1
    }
    if [[ -n $out ]]; then
        echo "$out" >&2
        echo "systemd-analyze verify warned about $unit (above)" >&2
        exit 1
    fi
done

fail() {
    echo "self-test failed: $*" >&2
    exit 1
}
expect() { # OUTPUT NEEDLE
    [[ $1 == *"$2"* ]] || fail "no '$2' in:"$'\n'"$1"
}

echo "self-test: check and irq/affinity.sh on a fake host"
root=$tmp/root
# An 8-CPU host with one NIC (four MSI queue interrupts) and every sysctl as the profile wants.
mkdir -p "$root/sys/devices/system/cpu" "$root/sys/class/net/eth0/device/msi_irqs" \
    "$root/sys/class/net/lo" "$root/proc"
echo 0-7 >"$root/sys/devices/system/cpu/online"
for irq in 40 41 42 43; do
    touch "$root/sys/class/net/eth0/device/msi_irqs/$irq"
    mkdir -p "$root/proc/irq/$irq"
done
echo "BOOT_IMAGE=/vmlinuz root=/dev/sda1" >"$root/proc/cmdline"
while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    key=${line%%=*}
    key=${key//[[:space:]]/}
    key=${key#-}
    path=$root/proc/sys/${key//.//}
    mkdir -p "$(dirname "$path")"
    echo "${line#*= }" >"$path"
done <sysctl/90-hyphae.conf
for irq in 40 41 42 43; do echo 0-7 >"$root/proc/irq/$irq/smp_affinity_list"; done

# Interrupts on every CPU: not tuned, and only that.
set +e
out=$(ROOT=$root ./check 2>&1)
rc=$?
set -e
((rc == 1)) || fail "check exit $rc with interrupts on worker CPUs"
expect "$out" "OK         net.core.rmem_max = 67108864"
expect "$out" "OK         net.ipv4.tcp_rmem = 4096 131072 33554432"
expect "$out" "NOT TUNED  irq placement: 4 of 4 NIC interrupts may run on worker CPUs 2-7"
expect "$out" "check: 22 of 23 tuned"

# The plan, then applying it: interrupts on CPUs 0-1, six workers on 2-7.
out=$(ROOT=$root irq/affinity.sh)
expect "$out" "irq 40 (eth0): 0-7 -> 0 (dry run)"
expect "$out" "irq 41 (eth0): 0-7 -> 1 (dry run)"
expect "$out" "hyphae-router --workers 6"
expect "$out" "CPUAffinity=2-7"
[[ $(<"$root/proc/irq/41/smp_affinity_list") == 0-7 ]] || fail "the dry run changed an IRQ"
ROOT=$root irq/affinity.sh --apply >/dev/null
[[ $(<"$root/proc/irq/41/smp_affinity_list") == 1 ]] || fail "--apply did not place IRQ 41"
out=$(ROOT=$root ./check) || fail "check after --apply:"$'\n'"$out"
expect "$out" "OK         irq placement: 4 NIC interrupts off the worker CPUs 2-7"
expect "$out" "check: 23 of 23 tuned"

# Setting by setting: a low buffer, a wrong exact value, a missing optional setting, governors.
echo 212992 >"$root/proc/sys/net/core/rmem_max"
echo 1 >"$root/proc/sys/net/ipv4/tcp_slow_start_after_idle"
rm "$root/proc/sys/kernel/io_uring_disabled"
for c in 0 1; do
    mkdir -p "$root/sys/devices/system/cpu/cpu$c/cpufreq"
    echo performance >"$root/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor"
done
echo powersave >"$root/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"
set +e
out=$(ROOT=$root ./check --quiet 2>&1)
rc=$?
set -e
((rc == 1)) || fail "check exit $rc on a detuned host"
expect "$out" "NOT TUNED  net.core.rmem_max = 212992 (want at least 67108864)"
expect "$out" "NOT TUNED  net.ipv4.tcp_slow_start_after_idle = 1 (want 0)"
expect "$out" "NOT TUNED  cpu governor: cpu1=powersave"
[[ $out != *"OK "* ]] || fail "--quiet printed OK lines:"$'\n'"$out"
out=$(ROOT=$root ./check 2>&1 || true)
expect "$out" "SKIP       kernel.io_uring_disabled (not in this kernel)"
# isolcpus decides the workers when set.
echo 4-7 >"$root/sys/devices/system/cpu/isolated"
out=$(ROOT=$root irq/affinity.sh)
expect "$out" "router worker CPUs: 4-7"
expect "$out" "NIC interrupt CPUs: 0-3"
# The router and the edge as their units run them (users, group, modes): needs root. Elsewhere
# it is skipped with one line, unless HYPHAE_REQUIRE_CAPABILITIES is set (to anything but empty
# or 0, as for the Rust tests): then a skip is a failure.
if ((EUID == 0)); then
    echo "units-test: cargo build -p hyphae-router -p hyphae-edge"
    (cd .. && cargo build --locked --quiet -p hyphae-router -p hyphae-edge)
    echo "units-test"
    ./units-test.sh
elif [[ ${HYPHAE_REQUIRE_CAPABILITIES:-0} != 0 ]]; then
    echo "units-test: needs root (HYPHAE_REQUIRE_CAPABILITIES is set: a missing capability fails)" >&2
    exit 1
else
    echo "SKIPPED: units-test: needs root"
fi
echo "tuning: all checks passed"
