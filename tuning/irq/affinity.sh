#!/usr/bin/env bash
# Spreads NIC queue interrupts over housekeeping CPUs, away from the cores that run hyphae-router's
# workers, and prints the --workers count and CPU pinning to use with that plan.
#
# Dry run by default: prints the plan and changes nothing. --apply writes
# /proc/irq/N/smp_affinity_list (root; irqbalance must be stopped or it moves them back).
#
# Usage: affinity.sh [--apply] [--nic IFACE]... [--worker-cpus LIST] [--nic-cpus LIST]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib/cpus.sh
. "$here/../lib/cpus.sh"

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

apply=0
nics=()
worker_override=""
nic_override=""
while (($#)); do
    case $1 in
    --apply) apply=1 ;;
    --dry-run) apply=0 ;;
    --nic)
        nics+=("${2:?--nic needs an interface}")
        shift
        ;;
    --worker-cpus)
        worker_override=${2:?--worker-cpus needs a CPU list}
        shift
        ;;
    --nic-cpus)
        nic_override=${2:?--nic-cpus needs a CPU list}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "affinity.sh: unknown argument '$1' (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

plan_cpus "$worker_override" "$nic_override"
if ((${#nics[@]} == 0)); then
    mapfile -t nics < <(physical_ifaces)
fi

echo "online CPUs:        $(compress_cpus "${ONLINE_CPUS[@]}")"
echo "NIC interrupt CPUs: $(compress_cpus "${NIC_CPUS[@]}")"
echo "router worker CPUs: $(compress_cpus "${WORKER_CPUS[@]}")"
echo

mapfile -t irqs < <(nic_irqs "${nics[@]}")
if ((${#irqs[@]} == 0)); then
    echo "no NIC queue interrupts found (interfaces: ${nics[*]:-none}); nothing to place"
else
    i=0
    for line in "${irqs[@]}"; do
        read -r irq ifc <<<"$line"
        cpu=${NIC_CPUS[i % ${#NIC_CPUS[@]}]}
        i=$((i + 1))
        cur=$(cat "${ROOT:-}/proc/irq/$irq/smp_affinity_list" 2>/dev/null || echo "?")
        if ((apply)); then
            if echo "$cpu" >"${ROOT:-}/proc/irq/$irq/smp_affinity_list" 2>/dev/null; then
                echo "irq $irq ($ifc): $cur -> $cpu"
            else
                echo "irq $irq ($ifc): $cur -> $cpu FAILED (managed IRQ, or not root)" >&2
            fi
        else
            echo "irq $irq ($ifc): $cur -> $cpu (dry run)"
        fi
    done
fi

workers=$(compress_cpus "${WORKER_CPUS[@]}")
echo
echo "Run the router with:"
echo "  hyphae-router --workers ${#WORKER_CPUS[@]} ...    (one worker per worker CPU)"
echo "and pin it to the worker CPUs, either in a systemd drop-in:"
echo "  systemctl edit hyphae-router    ->    [Service]"
echo "                                        CPUAffinity=${workers//,/ }"
echo "or by hand:  taskset -c $workers hyphae-router --workers ${#WORKER_CPUS[@]} ..."
if pgrep -x irqbalance >/dev/null 2>&1; then
    echo
    echo "note: irqbalance is running and will move these interrupts again; stop it or ban the"
    echo "      worker CPUs: IRQBALANCE_BANNED_CPULIST=$workers in /etc/default/irqbalance"
fi
if ((!apply)); then
    echo
    echo "dry run: nothing was changed (use --apply as root to place the interrupts)"
fi
