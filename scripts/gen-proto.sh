#!/usr/bin/env bash
# Regenerates the Swift code of DragonflyProto from Sources/DragonflyProto/proto/*.proto.
#
# Usage: scripts/gen-proto.sh            (from anywhere; needs protoc: apt-get install protobuf-compiler)
#
# 1. Builds the protoc plugins `protoc-gen-swift` (swift-protobuf) and `protoc-gen-grpc-swift-2`
#    (grpc-swift-protobuf) in release mode, at the versions pinned in Package.resolved, into the scratch
#    path .build-protoc/ (separate from .build/, so it never disturbs a normal build).
# 2. Runs protoc and writes <name>.pb.swift and <name>.grpc.swift into Sources/DragonflyProto/, each starting
#    with `// swift-format-ignore-file`.
# 3. Writes Sources/DragonflyProto/proto.sha256, the fingerprint of the inputs that
#    Tests/DragonflyProtoTests/ProtoFreshnessTests.swift recomputes. The recipe (keep both in step):
#        SHA-256 over, for each .proto file sorted by file name (byte order):
#            "<file name>\n" followed by the file's bytes,
#        then the two lines
#            "protoc-gen-swift <swift-protobuf version from Package.resolved>\n"
#            "protoc-gen-grpc-swift-2 <grpc-swift-protobuf version from Package.resolved>\n"
#        written as lowercase hex followed by "\n".
#
# The output is byte-identical run to run. Other engineers build at the same time on this machine: run it as
# `flock /tmp/df-build.lock scripts/gen-proto.sh` there.
set -euo pipefail
export LC_ALL=C

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

proto_dir="Sources/DragonflyProto/proto"
out_dir="Sources/DragonflyProto"
scratch=".build-protoc"
header="// swift-format-ignore-file"

die() {
    echo "gen-proto: error: $*" >&2
    exit 1
}
say() {
    echo "gen-proto: $*" >&2
}

command -v protoc >/dev/null 2>&1 || die "protoc not found; install it with: apt-get install -y protobuf-compiler"
command -v swift >/dev/null 2>&1 || die "swift not found on PATH"
[ -f Package.resolved ] || die "Package.resolved missing; run 'swift package resolve' first"

# The version pinned in Package.resolved for a package identity.
pinned_version() {
    local identity="$1" version
    version="$(awk -v id="\"identity\" : \"$identity\"" '
        index($0, id) { found = 1 }
        found && /"version"/ { sub(/.*"version" : "/, ""); sub(/".*/, ""); print; exit }
    ' Package.resolved)"
    [ -n "$version" ] || die "no pinned version of '$identity' in Package.resolved"
    echo "$version"
}

swift_protobuf_version="$(pinned_version swift-protobuf)"
grpc_protobuf_version="$(pinned_version grpc-swift-protobuf)"

shopt -s nullglob
protos=("$proto_dir"/*.proto)
shopt -u nullglob
[ "${#protos[@]}" -gt 0 ] || die "no .proto files in $proto_dir"

say "building protoc-gen-swift $swift_protobuf_version and protoc-gen-grpc-swift-2 $grpc_protobuf_version (release, $scratch)"
for product in protoc-gen-swift protoc-gen-grpc-swift-2; do
    swift build -c release --product "$product" --scratch-path "$scratch" >&2 \
        || die "building $product failed"
done
bin_dir="$(swift build -c release --scratch-path "$scratch" --show-bin-path)"
gen_swift="$bin_dir/protoc-gen-swift"
gen_grpc="$bin_dir/protoc-gen-grpc-swift-2"
[ -x "$gen_swift" ] && [ -x "$gen_grpc" ] || die "plugins not found in $bin_dir"
# Debian's protoc ships without the well-known types (libprotobuf-dev has them); take them from the pinned
# swift-protobuf checkout, which is what SwiftProtobuf's Google_Protobuf_* types were generated from.
wkt_dir="$scratch/checkouts/swift-protobuf/Protos/Sources/SwiftProtobuf"
[ -f "$wkt_dir/google/protobuf/duration.proto" ] || die "well-known .proto files not found in $wkt_dir"

# The plugins must be the pinned versions, or the fingerprint would lie.
[ "$("$gen_swift" --version)" = "protoc-gen-swift $swift_protobuf_version" ] \
    || die "$gen_swift reports '$("$gen_swift" --version)', expected $swift_protobuf_version; delete $scratch and retry"
[ "$("$gen_grpc" --version)" = "protoc-gen-grpc-swift-2 $grpc_protobuf_version" ] \
    || die "$gen_grpc reports '$("$gen_grpc" --version)', expected $grpc_protobuf_version; delete $scratch and retry"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/raw" "$tmp/out"

say "running $(protoc --version) on ${#protos[@]} files"
protoc \
    --proto_path="$proto_dir" \
    --proto_path="$wkt_dir" \
    --plugin=protoc-gen-swift="$gen_swift" \
    --plugin=protoc-gen-grpc-swift-2="$gen_grpc" \
    --swift_out="$tmp/raw" \
    --swift_opt=Visibility=Package,UseAccessLevelOnImports=true \
    --grpc-swift-2_out="$tmp/raw" \
    --grpc-swift-2_opt=Visibility=Package,UseAccessLevelOnImports=true \
    "${protos[@]}" \
    || die "protoc failed"

# Prepend the swift-format directive to every generated file; drop the empty gRPC files of service-less protos.
generated=0
for file in "$tmp"/raw/*.swift; do
    [ -e "$file" ] || continue
    if [[ "$file" == *.grpc.swift ]] && grep -q '^// This file contained no services' "$file"; then
        continue
    fi
    { printf '%s\n' "$header"; cat "$file"; } >"$tmp/out/$(basename "$file")"
    generated=$((generated + 1))
done
[ "$generated" -gt 0 ] || die "protoc produced no Swift files"

# The fingerprint (recipe at the top of this file).
{
    while IFS= read -r file; do
        printf '%s\n' "$(basename "$file")"
        cat "$file"
    done < <(printf '%s\n' "${protos[@]}" | sort)
    printf 'protoc-gen-swift %s\n' "$swift_protobuf_version"
    printf 'protoc-gen-grpc-swift-2 %s\n' "$grpc_protobuf_version"
} | sha256sum | awk '{ print $1 }' >"$tmp/out/proto.sha256"

# Remove previously generated files (recognised by their first line) that protoc no longer produces.
for file in "$out_dir"/*.pb.swift "$out_dir"/*.grpc.swift; do
    [ -e "$file" ] || continue
    if [ ! -e "$tmp/out/$(basename "$file")" ] && [ "$(head -n 1 "$file")" = "$header" ]; then
        rm -f "$file"
        say "removed stale $file"
    fi
done
# Copy only what changed, so an unchanged file keeps its timestamp and triggers no rebuild.
changed=0
for file in "$tmp"/out/*; do
    target="$out_dir/$(basename "$file")"
    if ! cmp -s "$file" "$target"; then
        cp "$file" "$target"
        changed=$((changed + 1))
    fi
done

say "generated $generated Swift files, $changed file(s) changed; fingerprint $(cat "$out_dir/proto.sha256")"
