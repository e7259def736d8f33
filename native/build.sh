#!/usr/bin/env bash
# Builds native/build/libntmfront.so (the native front end, docs/service.md "Native front end") with Debian's gRPC
# C++ library, installing it first when it is not there (apt-get: as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")"
if ! pkg-config --exists grpc++ 2>/dev/null || ! command -v g++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "the native front end needs libgrpc++-dev, g++ and pkg-config (Debian/Ubuntu: apt-get install" \
             "libgrpc++-dev g++ pkg-config); run as root or with sudo to have them installed" >&2
        exit 1
    fi
    echo "installing libgrpc++-dev, g++, pkg-config (apt-get)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libgrpc++-dev g++ pkg-config >/dev/null
fi
mkdir -p build
# shellcheck disable=SC2046  # pkg-config's flags are words
g++ -std=c++17 -O2 -Wall -Wextra -fPIC -shared -fvisibility=hidden -o build/libntmfront.so.tmp front.cc \
    $(pkg-config --cflags --libs grpc++) -pthread
mv build/libntmfront.so.tmp build/libntmfront.so
echo "built native/build/libntmfront.so"
