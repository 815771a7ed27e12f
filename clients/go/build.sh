#!/usr/bin/env bash
# Build the Go client from protos/ in GOPATH mode against Debian's Go packages
# (golang-go 1.19, golang-google-grpc-dev, golang-google-protobuf-dev, protoc-gen-go,
# protoc-gen-go-grpc, protobuf-compiler). The generated stubs go to a scratch GOPATH,
# never into the repository.
#
#   clients/go/build.sh OUT_BINARY
set -euo pipefail
out=${1:?usage: build.sh OUT_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT

# go_package in the .proto decides the import path: github.com/xsell/xsell/gen/go/xsell/v1
mkdir -p "$gopath/src"
protoc -I "$root/protos" --go_out="$gopath/src" --go-grpc_out="$gopath/src" \
    $(cd "$root/protos" && find . -name '*.proto' | sed 's|^\./||' | sort)
cp -r "$here/xsell-client" "$gopath/src/xsell-client"
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
cd "$gopath/src/xsell-client"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" go build -o "$out" .
