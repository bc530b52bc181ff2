#!/usr/bin/env bash
# A throwaway PostgreSQL for the store tests (tests/store, marker `postgres`).
#
# Usage (from the repository root, as root on Debian 12 or as an ordinary user):
#
#     eval "$(.ci/postgres.sh)"      # start (or reuse) the cluster; exports CONSCIENCE_TEST_POSTGRES_URL
#     source .ci/postgres.sh         # the same, for a shell that prefers `source`
#     .ci/postgres.sh url            # print the URL of the running cluster (no export)
#     .ci/postgres.sh stop           # stop the cluster and delete its directory
#
# `start` (the default) prints exactly one line on stdout,
#     export CONSCIENCE_TEST_POSTGRES_URL='postgresql://conscience:<pw>@127.0.0.1:<port>/conscience_test'
# and its progress on stderr. It exits non-zero, printing nothing on stdout, if it fails.
#
# What it does, and why:
# - installs the server only when no initdb is found under /usr/lib/postgresql/*/bin (apt-get,
#   root only), with Debian's automatic "main" cluster switched off: we want no server on 5432;
# - initdb refuses to run as root, so as root the cluster belongs to the `postgres` user (created
#   if missing); as any other user it belongs to that user;
# - the cluster lives in $CONSCIENCE_PG_DIR (default ${TMPDIR:-/tmp}/conscience-ci-postgres) and
#   listens on 127.0.0.1 only, on $CONSCIENCE_PG_PORT (default 54329) or the next free port, with
#   its Unix socket inside that directory;
# - password authentication (scram) over TCP, so the tests see a real password in the URL and can
#   check that no error message repeats it;
# - fsync=off: the cluster is throwaway and the tests never crash the server, only clients; the
#   store's own durability settings are unchanged (synchronous_commit stays on);
# - a second `start` finds the running cluster and only prints its URL (well under a second).

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: run as a child, so that neither `set -e` nor `exit` reaches the caller's shell,
    # and export the line it prints. (Hence this comes before `set -euo pipefail`.)
    __conscience_pg_out="$(bash "${BASH_SOURCE[0]}" start)" || {
        unset __conscience_pg_out
        return 1
    }
    eval "$__conscience_pg_out"
    unset __conscience_pg_out
    return 0
fi

set -euo pipefail

DIR="${CONSCIENCE_PG_DIR:-${TMPDIR:-/tmp}/conscience-ci-postgres}"
PORT="${CONSCIENCE_PG_PORT:-54329}"
DB="conscience_test"
ROLE="conscience"

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

install_server() {
    if [[ $(id -u) -ne 0 ]]; then
        log "no PostgreSQL server found under /usr/lib/postgresql and not root: install postgresql"
        exit 1
    fi
    log "installing postgresql with apt-get"
    # Debian's package would create and start a cluster on 5432; we want only ours. The file is
    # managed by ucf, which would ask about a file it did not write: keep ours, without asking.
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >&2
}

# Run a command as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

url() {
    local password port
    password="$(cat "$DIR/password")"
    port="$(cat "$DIR/port")"
    echo "postgresql://$ROLE:$password@127.0.0.1:$port/$DB"
}

is_running() {
    [[ -f "$DIR/data/postmaster.pid" && -f "$DIR/port" ]] || return 1
    as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

start() {
    BIN="$(find_bin)" || {
        install_server
        BIN="$(find_bin)" || {
            log "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
            exit 1
        }
    }
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi

    if is_running; then
        log "reusing the cluster in $DIR"
        echo "export CONSCIENCE_TEST_POSTGRES_URL='$(url)'"
        return 0
    fi

    if [[ ! -f "$DIR/data/PG_VERSION" ]]; then
        log "initialising a cluster in $DIR ($BIN)"
        rm -rf "$DIR"
        mkdir -p "$DIR"
        # Letters and digits only: nothing to escape in the URL.
        tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$DIR/password" || true
        [[ $(id -u) -eq 0 ]] && chown -R postgres: "$DIR"
        chmod 700 "$DIR"
        as_owner "$BIN/initdb" -D "$DIR/data" -U "$ROLE" --pwfile="$DIR/password" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync \
            >"$DIR/initdb.log" 2>&1 || {
            cat "$DIR/initdb.log" >&2
            exit 1
        }
    fi

    while port_in_use "$PORT"; do
        PORT=$((PORT + 1))
    done
    echo "$PORT" >"$DIR/port"
    log "starting on 127.0.0.1:$PORT"
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR -c fsync=off -c max_connections=200" \
        start >&2 || {
        cat "$DIR/server.log" >&2
        exit 1
    }

    if [[ -z "$(as_owner "$BIN/psql" -h "$DIR" -p "$PORT" -U "$ROLE" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]]; then
        as_owner "$BIN/createdb" -h "$DIR" -p "$PORT" -U "$ROLE" "$DB"
    fi
    echo "export CONSCIENCE_TEST_POSTGRES_URL='$(url)'"
}

stop() {
    if [[ -f "$DIR/data/postmaster.pid" ]]; then
        BIN="$(find_bin)"
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$DIR"
    log "stopped; removed $DIR"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    url)
        BIN="$(find_bin)"
        is_running || { log "no cluster is running in $DIR"; exit 1; }
        url
        ;;
    *)
        log "usage: $0 [start|stop|url]"
        exit 2
        ;;
esac
