#!/bin/sh
# Writes the compose stack's .env from .env.example, with fresh random secrets
# (docs/deploy.md, "Quick start"). Run from the checkout:
#
#     sh deploy/env.sh cpu    # COMPOSE_PROFILES=cpu: `docker compose up -d` is the CPU stack
#     sh deploy/env.sh gpu    # COMPOSE_PROFILES=gpu (the default)
#
# It sets CONSCIENCE_ADMIN_KEY (the nightly job's key to switch the proxy's adapter) and
# POSTGRES_PASSWORD (the GPU stack's store), both hex from /dev/urandom. It never overwrites an
# existing .env, writes it readable by its owner only, and prints no secret: read the admin key
# with `grep ^CONSCIENCE_ADMIN_KEY= .env` when you need it.
set -eu

profile="${1:-gpu}"
case "$profile" in
    cpu | gpu) ;;
    *)
        echo "usage: sh deploy/env.sh [cpu|gpu]" >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."
if [ -e .env ]; then
    echo "env.sh: .env exists already; not overwriting it (remove it first to start afresh)" >&2
    exit 1
fi

# n random bytes as 2n hex digits.
hex() {
    od -An -N "$1" -tx1 /dev/urandom | tr -d ' \n'
}

admin_key="$(hex 32)"
postgres_password="$(hex 24)"
umask 077
sed -e "s/^COMPOSE_PROFILES=.*/COMPOSE_PROFILES=$profile/" \
    -e "s/^CONSCIENCE_ADMIN_KEY=.*/CONSCIENCE_ADMIN_KEY=$admin_key/" \
    -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$postgres_password/" \
    .env.example >.env.tmp
mv .env.tmp .env
echo "env.sh: wrote .env (COMPOSE_PROFILES=$profile, a new CONSCIENCE_ADMIN_KEY and POSTGRES_PASSWORD)" >&2
