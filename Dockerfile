# syntax=docker/dockerfile:1
# wsipipe batch image: CUDA PyTorch + wsipipe (OpenSlide comes from the openslide-bin wheel,
# no system packages needed). Data and outputs are mounted volumes; the entry point is the
# `wsipipe` command, so `docker run IMAGE tile ...` runs `wsipipe tile ...`. No HEALTHCHECK:
# the container is a batch job that exits when its command is done.
#
#   docker build -t wsipipe:0.1.0 .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<ver>-cuda<ver>-cudnn9-runtime ...
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

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/cache \
    TORCH_HOME=/cache/torch \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp

WORKDIR /opt/wsipipe
COPY pyproject.toml README.md ./
COPY wsipipe ./wsipipe

# The base image's CUDA build of torch satisfies `torch>=2.2`, so pip keeps it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m pip install --no-cache-dir . \
    && python -c "import openslide, torch, wsipipe.cli; print('openslide', openslide.__library_version__, 'torch', torch.__version__)" \
    && wsipipe --version

RUN groupadd --gid 10001 wsipipe \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash wsipipe \
    && mkdir -p /data /out /cache \
    && chown wsipipe:wsipipe /out \
    && chmod 1777 /cache

USER 10001:10001
WORKDIR /out
VOLUME ["/data", "/out"]
ENTRYPOINT ["wsipipe"]
CMD ["--help"]
