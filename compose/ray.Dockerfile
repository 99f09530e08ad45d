# A Ray node for TuneDeck's training queue: LLaMA-Factory's official image plus Ray (with its dashboard
# and Jobs API) and TensorBoard. The same image runs the head (compose profile `ray`) and, on other GPU
# hosts, the worker nodes that join it (README: "Training queue and clusters").
ARG LLAMAFACTORY_BASE=hiyouga/llamafactory:0.9.5
FROM ${LLAMAFACTORY_BASE}
ARG RAY_VERSION=2.60.0
ARG TENSORBOARD_VERSION=2.20.0
RUN pip install --no-cache-dir "ray[default]==${RAY_VERSION}" "tensorboard==${TENSORBOARD_VERSION}"
