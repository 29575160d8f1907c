# shellcheck shell=bash
# CPU and IRQ helpers shared by irq/affinity.sh and check. Sourced, not run.
#
# Every path is read under "${ROOT:-}" so that tests can point the scripts at a fake /proc and
# /sys. The plan: NIC interrupts go to "housekeeping" CPUs, the router's workers get the rest.
# - If the kernel isolates CPUs (isolcpus=, shown in /sys/devices/system/cpu/isolated), the
#   isolated CPUs are the workers' and every other CPU does housekeeping.
# - Otherwise the first quarter of the online CPUs (at least one) does housekeeping, the rest are
#   the workers'; a one-CPU host shares its CPU.
# - --worker-cpus / --nic-cpus override either side.

# Expands a CPU list ("0-3,8,10-11") into one number per word.
expand_cpus() {
    local list=$1 part lo hi c parts=() out=()
    IFS=, read -r -a parts <<<"$list"
    for part in "${parts[@]}"; do
        part=${part//[[:space:]]/}
        [[ -z $part ]] && continue
        if [[ $part == *-* ]]; then
            lo=${part%-*}
            hi=${part#*-}
            for ((c = lo; c <= hi; c++)); do out+=("$c"); done
        else
            out+=("$part")
        fi
    done
    echo "${out[*]}"
}

# Compresses CPU numbers (arguments, ascending) into a list: 0 1 2 5 -> "0-2,5".
compress_cpus() {
    local res="" start="" prev="" c
    for c in "$@"; do
        if [[ -n $prev && $c -eq $((prev + 1)) ]]; then
            prev=$c
            continue
        fi
        if [[ -n $start ]]; then
            res+="${res:+,}$start"
            [[ $prev != "$start" ]] && res+="-$prev"
        fi
        start=$c
        prev=$c
    done
    if [[ -n $start ]]; then
        res+="${res:+,}$start"
        [[ $prev != "$start" ]] && res+="-$prev"
    fi
    echo "$res"
}

# Sets the arrays NIC_CPUS and WORKER_CPUS. Arguments: worker override, NIC override (either
# may be empty).
plan_cpus() {
    local worker_override=$1 nic_override=$2 online isolated c
    online=$(cat "${ROOT:-}/sys/devices/system/cpu/online")
    read -r -a ONLINE_CPUS <<<"$(expand_cpus "$online")"
    isolated=$(cat "${ROOT:-}/sys/devices/system/cpu/isolated" 2>/dev/null || true)
    NIC_CPUS=()
    WORKER_CPUS=()
    if [[ -n $worker_override ]]; then
        read -r -a WORKER_CPUS <<<"$(expand_cpus "$worker_override")"
    elif [[ -n $isolated ]]; then
        read -r -a WORKER_CPUS <<<"$(expand_cpus "$isolated")"
    else
        local n=${#ONLINE_CPUS[@]} house
        house=$(((n + 3) / 4))
        if ((n == 1)); then
            WORKER_CPUS=("${ONLINE_CPUS[0]}")
        else
            WORKER_CPUS=("${ONLINE_CPUS[@]:house}")
        fi
    fi
    if [[ -n $nic_override ]]; then
        read -r -a NIC_CPUS <<<"$(expand_cpus "$nic_override")"
    else
        for c in "${ONLINE_CPUS[@]}"; do
            if [[ " ${WORKER_CPUS[*]} " != *" $c "* ]]; then NIC_CPUS+=("$c"); fi
        done
        # Nothing left for housekeeping (one CPU, or every CPU isolated): share.
        if ((${#NIC_CPUS[@]} == 0)); then NIC_CPUS=("${ONLINE_CPUS[0]}"); fi
    fi
}

# Physical network interfaces (those backed by a device), one per line.
physical_ifaces() {
    local d
    for d in "${ROOT:-}"/sys/class/net/*; do
        [[ -e $d/device ]] && basename "$d"
    done
    return 0
}

# "IRQ IFACE" per line for the queue interrupts of the given interfaces: MSI vectors from sysfs,
# or /proc/interrupts lines that name the interface.
nic_irqs() {
    local ifc irq found
    for ifc in "$@"; do
        found=0
        if [[ -d ${ROOT:-}/sys/class/net/$ifc/device/msi_irqs ]]; then
            for irq in "${ROOT:-}/sys/class/net/$ifc/device/msi_irqs"/*; do
                [[ -e $irq ]] || continue
                echo "$(basename "$irq") $ifc"
                found=1
            done
        fi
        if ((found == 0)) && [[ -r ${ROOT:-}/proc/interrupts ]]; then
            awk -v ifc="$ifc" '$NF ~ "^"ifc"([-:@]|$)" { sub(":", "", $1); print $1, ifc }' \
                "${ROOT:-}/proc/interrupts"
        fi
    done
    return 0
}
