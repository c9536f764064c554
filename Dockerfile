# syntax=docker/dockerfile:1
# The imaging-cds gateway and worker image (one image, two commands):
#   docker build -t registry.hospital.example/imaging/imaging-cds:0.1.0 .
#   docker run --rm registry.hospital.example/imaging/imaging-cds:0.1.0 models list
# Triton runs from NVIDIA's own image (see README, "Deploying on Kubernetes").

# Python 3.11 on Debian 12, pinned by tag and by the digest of its multi-architecture index.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- build: install the project and its pinned dependencies into a virtual environment -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
# Every dependency ships a manylinux (glibc <= 2.28) wheel for CPython 3.11, and their native libraries need only
# what Debian's slim image has (libc, libstdc++, libgcc_s, zlib): no compiler in either stage. pip also writes the
# bytecode, so nothing is compiled at run time on the read-only filesystem.
RUN /opt/venv/bin/pip install --upgrade pip==26.3 \
 && /opt/venv/bin/pip install --only-binary=:all: --no-binary=imaging-cds .

# ---- runtime: the virtual environment, the model repository, a non-root user ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid ${UID} imaging-cds \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin imaging-cds
COPY --from=build /opt/venv /opt/venv
# The manifests the workers read, and the tree Triton can be fed from (helm: triton.modelRepository.source=image).
COPY triton_repo/ /app/triton_repo/
RUN chmod -R a+rX,go-w /app/triton_repo
# Read-only root filesystem: nothing is written outside /tmp, which Kubernetes mounts as an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    IMAGING_CDS_MODEL_REPOSITORY=/app/triton_repo \
    IMAGING_CDS_HTTP_HOST=0.0.0.0 \
    IMAGING_CDS_GRPC_HOST=0.0.0.0
WORKDIR /app
USER ${UID}:${UID}
EXPOSE 8090 50051
ENTRYPOINT ["imaging-cds"]
CMD ["gateway"]
