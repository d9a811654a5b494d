#!/usr/bin/env bash
# Mesa's lavapipe (a software Vulkan driver with float16 shader arithmetic) for the float16 WebGPU
# training test (test/parity/trainStep.onnx.webgpu.parity.test.ts, issue 25): SwiftShader, the
# driver of the float32 WebGPU tests, has no shader-f16, and Debian 12's own Mesa (22.3) lacks
# what Dawn needs (shaderUniformBufferArrayDynamicIndexing), so this takes bookworm-backports'
# mesa-vulkan-drivers. It is only downloaded and unpacked: apt runs with its own source list,
# package lists and cache in a temporary folder, and nothing is installed or configured on the
# system. The driver needs libLLVM-15 (Debian 12's libllvm15, which chromium's dependencies bring)
# and a Vulkan loader: Debian's chromium ships one in /usr/lib/chromium (the tests put that folder
# on LD_LIBRARY_PATH, test/helpers/ciRequirements.ts), or install libvulkan1.
#
#   scripts/fetch-lavapipe.sh [DEST]     (default .cache/lavapipe; writes DEST/lvp_icd.json)
set -euo pipefail
dest=$(realpath -m "${1:-.cache/lavapipe}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$dest"
echo "deb http://deb.debian.org/debian bookworm-backports main" >"$tmp/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=$(id -un)"
)
apt-get "${apt_opts[@]}" update -qq
(cd "$tmp" && apt-get "${apt_opts[@]}" download -qq mesa-vulkan-drivers)
deb=$(ls "$tmp"/mesa-vulkan-drivers_*.deb)
dpkg-deb -x "$deb" "$tmp/x"
cp "$tmp/x/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" "$dest/"
cat >"$dest/lvp_icd.json" <<EOF
{
  "file_format_version": "1.0.0",
  "ICD": { "library_path": "$dest/libvulkan_lvp.so", "api_version": "1.3.0" }
}
EOF
echo "lavapipe from $(basename "$deb") in $dest"
