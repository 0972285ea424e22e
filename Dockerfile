# vast-pipeline on a CUDA runtime: ffmpeg + the package. For Ray cluster nodes and GPU stages.
#   docker build -t vast-pipeline .
#   docker run --gpus all vast-pipeline --help
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential ffmpeg espeak-ng ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vast-pipeline
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY vast ./vast
RUN pip install ".[s3,gcs]" && vast-pipeline --help >/dev/null

ENTRYPOINT ["vast-pipeline"]
CMD ["--help"]
