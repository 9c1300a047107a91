# slam3r real-time reconstruction service: `docker compose up` (see docker-compose.yml) or
#   docker build -t slam3r . && docker run --rm -e RABBITMQ_URL=amqp://guest:guest@broker:5672/ slam3r
# CPU torch by default; for CUDA build with e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models

# libgomp1: OpenMP for torch / Open3D; libusb-1.0-0 and libgl1: shared libraries the Open3D wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libusb-1.0-0 libgl1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX}" torch
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && python -c "import slam3r.service.worker, open3d"
COPY configs ./configs

RUN useradd --create-home --uid 1000 slam3r && mkdir -p /data/segments /models \
    && chown slam3r /data/segments /models
USER slam3r

# `docker stop` sends SIGTERM: the worker finishes the frames it holds, saves open segments and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["slam3r"]
CMD ["serve", "--config", "configs/wild.yaml", "--weights", "default", "--device", "auto"]
