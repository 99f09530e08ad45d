# LLaMA-Factory's official image plus TensorBoard: the image installs the `metrics` and `deepspeed`
# extras only (docker/docker-cuda/Dockerfile, v0.9.5), so `report_to: tensorboard` fails without it.
ARG LLAMAFACTORY_BASE=hiyouga/llamafactory:0.9.5
FROM ${LLAMAFACTORY_BASE}
ARG TENSORBOARD_VERSION=2.20.0
RUN pip install --no-cache-dir "tensorboard==${TENSORBOARD_VERSION}"
