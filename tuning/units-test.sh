#!/usr/bin/env bash
# Runs hyphae-router and hyphae-edge the way tuning/systemd/hyphae-router.service and
# hyphae-edge.service do (their users and group, directory owners and modes, flags, umask, no
# new privileges) and checks that they work together on one host and that nobody else gets in:
#   - the router's local socket is mode 0660, owner hyphae-router, group hyphae, in a runtime
#     directory owned by hyphae-router:hyphae, mode 0750 (RuntimeDirectory=);
#   - a process with the edge's credentials (user hyphae-edge, supplementary group hyphae)
#     connects; user nobody, and hyphae-edge without the group, get EACCES (also with the
#     directory opened up, so the socket's own mode is checked, not only the directory's);
#   - `hyphae-edge init` leaves ca.key at mode 0600; the edge's bridge status reports the
#     router connected;
#   - both exit 0 within 15 s of SIGTERM, and the router removes its socket.
# Needs root (it creates the system users hyphae-router and hyphae-edge and the group hyphae
# when missing, and removes again those it created), target/debug/hyphae-router and
# target/debug/hyphae-edge (cargo build -p hyphae-router -p hyphae-edge), curl and python3.
# /run/hyphae and /var/lib/* are stood in for by a temporary directory, so a router or an edge
# already running on the host is not disturbed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "units-test: $*"; }
die() {
    echo "units-test: FAILED: $*" >&2
    exit 1
}
((EUID == 0)) || {
    echo "units-test: needs root" >&2
    exit 2
}
for b in hyphae-router hyphae-edge; do
    [[ -x target/debug/$b ]] || die "target/debug/$b missing: cargo build -p hyphae-router -p hyphae-edge"
done
command -v curl >/dev/null || die "needs curl"
command -v setpriv >/dev/null || die "needs setpriv (util-linux)"
# A python3 the unprivileged users can run (a pyenv shim under /root is not one).
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || die "needs python3"

# The users and the group, as the units' install notes make them.
created=()
if ! getent group hyphae >/dev/null; then
    groupadd --system hyphae
    created+=(group:hyphae)
fi
if ! getent passwd hyphae-router >/dev/null; then
    useradd --system --gid hyphae --no-create-home --home-dir /var/lib/hyphae \
        --shell /usr/sbin/nologin hyphae-router
    created+=(user:hyphae-router)
fi
if ! getent passwd hyphae-edge >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/hyphae-edge \
        --shell /usr/sbin/nologin hyphae-edge
    created+=(user:hyphae-edge)
fi

tmp=$(mktemp -d /tmp/hyphae-units.XXXXXX)
pids=()
cleanup() {
    local pid i
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
    for ((i = ${#created[@]} - 1; i >= 0; i--)); do
        case ${created[i]} in
        user:*) userdel "${created[i]#user:}" 2>/dev/null || true ;;
        group:*) groupdel "${created[i]#group:}" 2>/dev/null || true ;;
        esac
    done
}
trap cleanup EXIT

# Stand-ins: /usr/local/bin, /etc/hyphae, /run/hyphae (RuntimeDirectory=hyphae, mode 0750,
# owned by User=:Group=), /var/lib/hyphae (StateDirectory=hyphae, 0700, same owners) and
# /var/lib/hyphae-edge (StateDirectory=hyphae-edge, 0755, hyphae-edge and its own group).
chmod 0755 "$tmp"
mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/log" "$tmp/run" "$tmp/lib"
install -m 0755 target/debug/hyphae-router target/debug/hyphae-edge "$tmp/bin/"
run=$tmp/run/hyphae
router_state=$tmp/lib/hyphae
edge_state=$tmp/lib/hyphae-edge
install -d -o hyphae-router -g hyphae -m 0750 "$run"
install -d -o hyphae-router -g hyphae -m 0700 "$router_state"
install -d -o hyphae-edge -g "$(id -gn hyphae-edge)" -m 0755 "$edge_state"
sock=$run/router.sock

# Credentials as systemd gives them: User=hyphae-router Group=hyphae (plus the user's groups);
# User=hyphae-edge (its own group and groups) plus SupplementaryGroups=hyphae. A clean
# environment with the user's name and home, umask 0077 (UMask=), no new privileges; the
# daemons run in / (WorkingDirectory= unset). Each is a command prefix.
hyphae_gid=$(getent group hyphae | cut -d: -f3)
edge_gid=$(id -g hyphae-edge)
as_router=(setpriv --reuid hyphae-router --regid hyphae --init-groups --no-new-privs
    env -i PATH=/usr/bin:/bin USER=hyphae-router LOGNAME=hyphae-router
    HOME="$router_state" RUST_LOG=info)
as_edge=(setpriv --reuid hyphae-edge --regid "$edge_gid"
    --groups "$(id -G hyphae-edge | tr ' ' ,),$hyphae_gid" --no-new-privs
    env -i PATH=/usr/bin:/bin USER=hyphae-edge LOGNAME=hyphae-edge
    HOME="$edge_state" RUST_LOG=info)
as_edge_without_group=(setpriv --reuid hyphae-edge --regid "$edge_gid" --clear-groups
    --no-new-privs env -i PATH=/usr/bin:/bin)
as_nobody=(setpriv --reuid nobody --regid "$(id -g nobody)" --clear-groups --no-new-privs
    env -i PATH=/usr/bin:/bin)

# A port free for TCP and UDP on every address (the router's -t and -q share it).
free_port() {
    "$py" - <<'EOF'
import socket
while True:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET6, kind) as s:
                s.bind(("::", port))
    except OSError:
        continue
    print(port)
    break
EOF
}

# Connects to the Unix socket $1: prints "connected" (exit 0), "PermissionError" (exit 3) or
# the error (exit 4).
connect_py='
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError as e:
    print("PermissionError:", e)
    sys.exit(3)
except OSError as e:
    print("error:", repr(e))
    sys.exit(4)
print("connected")
'
expect_connect() { # WHO connected|refused COMMAND-PREFIX...
    local who=$1 want=$2 out rc
    shift 2
    set +e
    out=$("$@" "$py" -c "$connect_py" "$sock" 2>&1)
    rc=$?
    set -e
    case $want in
    connected) ((rc == 0)) || die "$who could not connect to $sock: $out" ;;
    refused) ((rc == 3)) || die "$who: want PermissionError connecting to $sock, got: $out" ;;
    esac
    say "$who: $out"
}

# Waits up to $2 seconds for process $1 (a child of this shell) to exit; its status in $status.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then return 1; fi
    status=0
    wait "$pid" || status=$?
    local p rest=()
    for p in "${pids[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
    pids=("${rest[@]}")
}

# --- the router, as hyphae-router.service starts it (plus test ports, no TUN, no discovery) --
router_pid=
for attempt in 1 2 3; do
    port=$(free_port)
    api=127.0.0.1:$(free_port)
    (
        umask 077
        cd /
        exec >/dev/null 2>"$tmp/log/router.log"
        exec "${as_router[@]}" "$tmp/bin/hyphae-router" -k "$router_state/priv_key.bin" --api-addr "$api" \
            --local-socket "$sock" --local-socket-mode 0660 --topic-forward-dir "$run/forward" \
            -t "$port" -q "$port" --no-tun --disable-peer-discovery
    ) &
    router_pid=$!
    pids+=("$router_pid")
    up=
    deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        kill -0 "$router_pid" 2>/dev/null || break
        if [[ -S $sock ]] && curl -fsS -o /dev/null "http://$api/api/v1/admin" 2>/dev/null; then
            up=1
            break
        fi
        sleep 0.1
    done
    [[ -n $up ]] && break
    wait_exit "$router_pid" 5 || true
    if grep -q "Address already in use" "$tmp/log/router.log" && ((attempt < 3)); then
        continue
    fi
    die "the router did not start:"$'\n'"$(cat "$tmp/log/router.log")"
done
say "router up (pid $router_pid, socket $sock, API $api)"

# --- the socket: mode, owner, group; who gets in ------------------------------------------
got=$(stat -c '%a %U %G' "$sock")
[[ $got == "660 hyphae-router hyphae" ]] || die "socket is '$got', want '660 hyphae-router hyphae'"
got=$(stat -c '%a %U %G' "$run")
[[ $got == "750 hyphae-router hyphae" ]] || die "runtime dir is '$got', want '750 hyphae-router hyphae'"
say "socket: mode 0660, hyphae-router:hyphae, in a 0750 hyphae-router:hyphae directory"
expect_connect "hyphae-edge with group hyphae" connected "${as_edge[@]}"
expect_connect "nobody" refused "${as_nobody[@]}"
if [[ $edge_gid != "$hyphae_gid" ]]; then
    expect_connect "hyphae-edge without group hyphae" refused "${as_edge_without_group[@]}"
fi
# The socket's own mode keeps them out too, not only the directory's.
chmod 0755 "$run"
expect_connect "nobody (directory opened to all)" refused "${as_nobody[@]}"
chmod 0750 "$run"

# --- the edge, as hyphae-edge.service starts it (ExecStartPre= init, then ExecStart=) -------
eapi=127.0.0.1:$(free_port)
cat >"$tmp/etc/edge.toml" <<EOF
proxy = "127.0.0.1:$(free_port)"
api = "$eapi"
router = "unix:$sock"
router_api = "http://$api"
state_dir = "$edge_state"

[homeserver]
server_names = ["units-test.invalid"]
federation_url = "https://127.0.0.1:1"
EOF
chmod 0644 "$tmp/etc/edge.toml"
(
    umask 077
    cd /
    exec "${as_edge[@]}" "$tmp/bin/hyphae-edge" --config "$tmp/etc/edge.toml" init
) >"$tmp/log/edge-init.log" 2>&1 ||
    die "hyphae-edge init failed:"$'\n'"$(cat "$tmp/log/edge-init.log")"
got=$(stat -c '%a %U' "$edge_state/ca.key" 2>&1) || die "no ca.key after init: $got"
[[ $got == "600 hyphae-edge" ]] || die "ca.key is '$got', want '600 hyphae-edge'"
say "edge init: ca.key mode 0600, owner hyphae-edge"
got=$(stat -c '%a' "$edge_state/ca.crt" 2>&1) || die "no ca.crt after init: $got"
[[ $got == 644 ]] || die "ca.crt is mode '$got', want 644 (the homeserver reads it)"
"${as_nobody[@]}" cat "$edge_state/ca.crt" >/dev/null ||
    die "another user (the homeserver) cannot read ca.crt"
if "${as_nobody[@]}" cat "$edge_state/ca.key" >/dev/null 2>&1; then
    die "another user can read ca.key"
fi
say "edge init: another user reads ca.crt and not ca.key"
(
    umask 077
    cd /
    exec >/dev/null 2>"$tmp/log/edge.log"
    exec "${as_edge[@]}" "$tmp/bin/hyphae-edge" --config "$tmp/etc/edge.toml"
) &
edge_pid=$!
pids+=("$edge_pid")
connected=
status_json=
deadline=$((SECONDS + 20))
while ((SECONDS < deadline)); do
    kill -0 "$edge_pid" 2>/dev/null || break
    status_json=$(curl -fsS "http://$eapi/api/v1/bridge/status" 2>/dev/null) || status_json=
    if [[ -n $status_json ]] && "$py" -c '
import json, sys
sys.exit(0 if json.loads(sys.argv[1])["router"]["connected"] is True else 1)
' "$status_json" 2>/dev/null; then
        connected=1
        break
    fi
    sleep 0.1
done
[[ -n $connected ]] || die "the edge did not report the router connected within 20 s" \
    "(last status: ${status_json:-none}):"$'\n'"$(cat "$tmp/log/edge.log")"
say "edge up (pid $edge_pid): bridge status reports the router connected"

# --- stop, as systemd does: the edge first (After=), SIGTERM, 15 s each -----------------------
kill -TERM "$edge_pid"
wait_exit "$edge_pid" 15 || die "the edge did not exit within 15 s of SIGTERM"
((status == 0)) || die "the edge exited $status on SIGTERM:"$'\n'"$(cat "$tmp/log/edge.log")"
kill -TERM "$router_pid"
wait_exit "$router_pid" 15 || die "the router did not exit within 15 s of SIGTERM"
((status == 0)) || die "the router exited $status on SIGTERM:"$'\n'"$(cat "$tmp/log/router.log")"
[[ ! -e $sock ]] || die "the router left its socket behind"
say "both exited 0 on SIGTERM; the socket is gone"
say "passed"
