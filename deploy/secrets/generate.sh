#!/bin/sh
# Creates the secrets docker-compose.yml mounts: the token-signing key (share it between
# replicas) and an API key. Run once from deploy/; the files never go into an image.
set -eu
cd "$(dirname "$0")"
umask 077
if [ ! -f signing_key.pem ]; then
    if command -v partgate >/dev/null 2>&1; then
        partgate keygen > signing_key.pem
    else
        docker run --rm --entrypoint /usr/local/bin/partgate partgate:latest keygen > signing_key.pem
    fi
fi
[ -f api_key ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > api_key
echo "secrets ready: $(pwd)/signing_key.pem $(pwd)/api_key"
