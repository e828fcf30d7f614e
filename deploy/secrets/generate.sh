#!/bin/sh
# Creates the secrets docker-compose.yml mounts, once (files that exist are kept, so a re-run
# after an upgrade only adds what is new and fixes modes):
#   signing_key.pem  Ed25519 token-signing key (`partgate keygen`, or openssl without partgate)
#   api_key          the API key clients log in with (48 hex characters)
#   tls_cert.pem     self-signed TLS certificate for localhost and 127.0.0.1 (the Python SDK
#   tls_key.pem      sends credentials only over TLS); PARTGATE_TLS_SAN adds names, e.g.
#                    PARTGATE_TLS_SAN="DNS:gw.example.com,IP:192.0.2.7"
# Needs openssl (1.1.1 or later); no Docker.
#
# Permissions: Compose bind-mounts file secrets with the host file's owner and mode (it ignores
# the long syntax's uid/gid/mode for `file:` secrets), and the container runs as uid 10001, not
# as you. So the files are 0644 (the container user can read its mount) inside this directory
# made 0700 (nobody else on the host can reach them).
set -eu
cd "$(dirname "$0")"
umask 077
chmod 0700 .

if [ ! -f signing_key.pem ]; then
    if command -v partgate >/dev/null 2>&1; then
        partgate keygen > signing_key.pem.new
    else
        openssl genpkey -algorithm ed25519 -out signing_key.pem.new
    fi
    mv signing_key.pem.new signing_key.pem
fi
if [ ! -f api_key ]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > api_key.new
    mv api_key.new api_key
fi
if [ ! -f tls_cert.pem ] || [ ! -f tls_key.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1${PARTGATE_TLS_SAN:+,$PARTGATE_TLS_SAN}" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature" \
        -addext "extendedKeyUsage=serverAuth" \
        -keyout tls_key.pem.new -out tls_cert.pem.new 2>/dev/null
    mv tls_key.pem.new tls_key.pem
    mv tls_cert.pem.new tls_cert.pem
fi
chmod 0644 signing_key.pem api_key tls_cert.pem tls_key.pem
echo "secrets ready in $(pwd) (directory 0700): signing_key.pem api_key tls_cert.pem tls_key.pem"
