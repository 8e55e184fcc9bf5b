#!/usr/bin/env bash
# Packs what `npm run gpu-check` needs onto a bare GPU machine that cannot reach a registry (the
# `device` machines: no internet, ≤ 64 MiB carried): this Node binary, the production
# node_modules (pruned: no source maps or minified browser bundles; Dawn for linux-x64 only),
# the native addon as built here, and the Vulkan loader (libvulkan.so.1; the NVIDIA driver brings
# its own ICD). Writes gpu-bundle/bundle.tar.xz and gpu-bundle/run.sh; on the GPU machine, from
# the repository root:   bash gpu-bundle/run.sh            (results: $OUT/gpu-check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f native/build/Release/sdlab_native.node ] || node native/build.mjs
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" gpu-bundle
cp "$(readlink -f "$(command -v node)")" "$stage/bin/node"
lib=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')
[ -n "$lib" ] || { echo "gpu-bundle: libvulkan.so.1 not found (apt-get install libvulkan1)" >&2; exit 1; }
cp "$(readlink -f "$lib")" "$stage/lib/libvulkan.so.1"
# production dependencies only, as npm resolves them
npm ls --omit=dev --parseable --all 2>/dev/null | grep '/node_modules/' | sed "s|^$PWD/||" | sort -u > "$stage/deps.txt"
tar -cf "$stage/nm.tar" --exclude='*.map' --exclude='*.min.js' --exclude='*.d.ts' --exclude='*.es2017.js' --exclude='*.fesm.js' \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' --exclude='node_modules/webgpu/dist/linux-arm64' \
  --exclude='node_modules/@tensorflow/*/dist/miniprogram' -T "$stage/deps.txt" native/build/Release/sdlab_native.node
tar -C "$stage" -xf "$stage/nm.tar" && rm "$stage/nm.tar" "$stage/deps.txt"
tar -C "$stage" -cJf gpu-bundle/bundle.tar.xz .
cat > gpu-bundle/run.sh <<'RUN'
#!/usr/bin/env bash
# Unpacks bundle.tar.xz beside the checkout (node_modules and the addon into the repository root)
# and runs `npm run gpu-check` with the bundled node and Vulkan loader. Arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
tar -C "$dir" -xJf gpu-bundle/bundle.tar.xz
[ -e node_modules ] || mv "$dir/node_modules" node_modules
mkdir -p native/build/Release && cp -n "$dir/native/build/Release/sdlab_native.node" native/build/Release/ 2>/dev/null || true
export PATH="$dir/bin:$PATH" LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null || true
node --version
exec node bin/run-ts.mjs bench/gpu_check.ts "$@"
RUN
chmod +x gpu-bundle/run.sh
ls -la gpu-bundle
