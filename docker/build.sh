#!/usr/bin/env bash
# Build MatrixOS's images on a machine with a docker daemon, and make the cluster's secrets once.
#   docker/build.sh            # matrixos:<version> (CPU)
#   docker/build.sh --gpu      # + matrixos-gpu:<version> (CUDA base, torch)
# Then: docker compose -f docker/compose.yaml up -d   (see docker/README.md)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)"

# Secrets: random, mode 0600, in docker/secrets/ (git-ignored); kept when they exist.
mkdir -p "$here/secrets"
chmod 700 "$here/secrets"
for name in s3_access_key s3_secret_key pg_password ray_token; do
    file="$here/secrets/$name"
    if [ ! -s "$file" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$file")
        echo "made $file"
    fi
done

docker build -f "$here/Dockerfile" --target runtime -t "matrixos:$version" "$root"
if [ "${1:-}" = "--gpu" ]; then
    docker build -f "$here/Dockerfile" --target gpu -t "matrixos-gpu:$version" "$root"
fi
echo "built matrixos:$version; start: docker compose -f docker/compose.yaml up -d"
