# embedsvc server image. The first stage builds the sdist and the wheel from it (python -m build, as the
# tests do); the second installs the wheel with the `server` and `index` extras through
# scripts/install_wheel.sh -- the same script and extras tests/test_packaging.py installs and checks in a
# fresh virtual environment. The bundled model (all-MiniLM-L6-v2) is inside: no network at run time.
# Not built on the project's CI machines (no container daemon there); see docs/install.md.
#
#   docker build -t embedsvc .                                  # CPU (torch's CPU wheel)
#   docker build -t embedsvc:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       --build-arg EXTRAS=server,index-gpu .                   # CUDA: run with --gpus all
#   docker run -p 50051:50051 -p 8080:8080 -v embedsvc-data:/data embedsvc
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
RUN python -m pip install --no-cache-dir build \
    && python -m build --outdir /dist .

FROM ${PYTHON_IMAGE}
# torch: the CPU build by default; a CUDA one from .../whl/cu128 (the torch wheels carry the CUDA libraries)
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=server,index
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/embedsvc \
    PATH=/opt/embedsvc/bin:$PATH
COPY --from=build /dist/ /tmp/dist/
COPY scripts/install_wheel.sh /tmp/install_wheel.sh
RUN python -m venv /opt/embedsvc \
    && TORCH_SPEC="$TORCH_SPEC" TORCH_INDEX_URL="$TORCH_INDEX_URL" \
       bash /tmp/install_wheel.sh /opt/embedsvc/bin/python /tmp/dist/embedsvc-*.whl "$EXTRAS" \
    && rm -rf /tmp/dist /tmp/install_wheel.sh \
    && useradd --create-home --uid 10001 embedsvc \
    && mkdir /data && chown embedsvc /data
USER embedsvc
WORKDIR /home/embedsvc
VOLUME /data
# gRPC, and the OpenAI/TEI-compatible HTTP API
EXPOSE 50051 8080
# grpc.health.v1 through the installed client: SERVING once the models are loaded, NOT_SERVING while
# loading or draining (exit 5 then)
HEALTHCHECK --interval=15s --timeout=15s --start-period=120s --retries=3 \
    CMD ["embedsvc", "models", "--wait", "10", "--timeout", "5"]
# SIGTERM (docker stop) drains in-flight requests before exiting: give it --stop-timeout above the grace period
STOPSIGNAL SIGTERM
ENTRYPOINT ["embedsvc", "serve", "--host", "0.0.0.0", "--port", "50051", "--http-port", "8080", "--data-dir", "/data"]
# more flags, e.g. docker run IMAGE --model bge=/models/bge-base-en-v1.5 (mount the folder)
CMD []
