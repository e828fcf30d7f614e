#!/usr/bin/env bash
# Attack bench: installs nginx from Debian's packages if it is missing, then runs
# benches/attack.rs, which starts a backend part, partgate and nginx on 127.0.0.1 and, for each
# known HTTP/2 attack, measures a legitimate client beside the attacker. One table on stdout.
#
#   bench/attack/run.sh                 # full run (PARTGATE_ATTACK_SECS, _QUIET_SECS, ... apply)
#   bench/attack/run.sh --quick         # ~1 s per attack; exits non-zero only if the bench itself
#                                       # breaks (set-up failed, an attack could not start at all)
#   bench/attack/run.sh --no-install    # use what is installed; without nginx, partgate alone
#
# See bench/README.md, "Attacks".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

die() {
    echo "attack/run.sh: $*" >&2
    exit 2
}

quick=()
install=1
for arg in "$@"; do
    case "$arg" in
    --quick) quick=(--quick) ;;
    --no-install) install= ;;
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

policy_made=
bench_pid=
cleanup() {
    local rc=$?
    if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
        # The bench and every process it started (backend, partgate, nginx master and workers)
        # share its process group: stop the group, then make sure.
        kill -TERM -- "-$bench_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 -- "-$bench_pid" 2>/dev/null || break
            sleep 0.3
        done
        kill -KILL -- "-$bench_pid" 2>/dev/null || true
    fi
    if [[ -n "$policy_made" ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nginx=${PARTGATE_COMPARE_NGINX:-/usr/sbin/nginx}
if [[ -n "$install" && ! -x "$nginx" ]]; then
    [[ "$(id -u)" == 0 ]] || die "installing nginx needs root (or pass --no-install)"
    command -v apt-get >/dev/null || die "no apt-get: install nginx yourself"
    # The package would start a system service on port 80; this bench runs its own instances,
    # so keep the service from starting during the install.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_made=1
    fi
    echo "attack/run.sh: apt-get install nginx" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >&2
fi
if [[ -x "$nginx" ]]; then
    version=$("$nginx" -v 2>&1) || true
    echo "attack/run.sh: nginx: ${version##*/}" >&2
else
    echo "attack/run.sh: nginx not installed; partgate runs alone" >&2
fi

# Slowloris holds hundreds of connections (PARTGATE_ATTACK_SLOW_CONNS), and each proxy as many
# again; the bench raises its soft limit to the hard one, this raises the hard one if it can.
want=65536
hard=$(ulimit -Hn)
if [[ "$hard" != unlimited && "$hard" -lt "$want" ]]; then
    ulimit -Hn "$want" 2>/dev/null || want=$hard
fi
ulimit -n "$want" || true

mkdir -p target/attack
table=target/attack/last-table.md
# Own process group (setsid), so that cleanup can stop everything the bench started.
setsid cargo bench --bench attack -- "${quick[@]}" >"$table" &
bench_pid=$!
rc=0
wait "$bench_pid" || rc=$?
bench_pid=
cat "$table"
echo "attack/run.sh: table saved in $table (exit $rc)" >&2
exit "$rc"
