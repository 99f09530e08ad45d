#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian bookworm machine, idempotently.
# Slow parts are cached under $TUNEDECK_CACHE, keyed by version; a warm run only checks.
# Prints `export ...` lines for the test run on stdout; progress goes to stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TUNEDECK_CACHE:-/var/cache/tunedeck}
PY=${PYTHON:-python3}
# shellcheck source=versions.env
source "$ROOT/.ci/versions.env"
mkdir -p "$CACHE"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
key() { cat "$@" | sha256sum | cut -c1-12; }
quiet_pip() { grep -v -e 'is ignored: it is neither' -e '^$' >&2 || true; }

# --- Debian packages ------------------------------------------------------------------
need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" iptables >/dev/null
fi

# --- Docker engine --------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    log "removing stale /var/run/docker.pid"
    rm -f /var/run/docker.pid
  fi
  log "starting dockerd (log: $CACHE/dockerd.log)"
  (setsid dockerd >"$CACHE/dockerd.log" 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    log "dockerd did not answer within 60 s; its log ends with:"
    tail -n 30 "$CACHE/dockerd.log" >&2
    exit 1
  fi
fi

# --- App + test venv --------------------------------------------------------------------
APP_VENV="$CACHE/venv-app-$(key "$ROOT/requirements.txt" "$ROOT/tests/requirements.txt")"
if [ ! -f "$APP_VENV/.done" ]; then
  log "building $APP_VENV"
  rm -rf "$APP_VENV"
  "$PY" -m venv "$APP_VENV"
  "$APP_VENV/bin/pip" install -q -r "$ROOT/requirements.txt" -r "$ROOT/tests/requirements.txt" 2>&1 | quiet_pip
  touch "$APP_VENV/.done"
fi

# --- llama.cpp (converter + llama-quantize), from the llama-cpp-python sdist --------------
LLAMA_DIR="$CACHE/llama.cpp-$LLAMA_CPP_PYTHON_VERSION-$(echo "$LLAMA_TOOLS $LLAMA_CMAKE_FLAGS" | sha256sum | cut -c1-8)"
SDIST="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
if [ ! -f "$LLAMA_DIR/.done" ]; then
  log "building llama.cpp $LLAMA_CPP_PYTHON_VERSION ($LLAMA_TOOLS; ~6 min on 2 cores)"
  mkdir -p "$CACHE/dl" "$LLAMA_DIR"
  [ -f "$CACHE/dl/$SDIST.tar.gz" ] || pip download -q --no-deps --no-binary :all: \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$CACHE/dl" 2>&1 | quiet_pip
  rm -rf "$LLAMA_DIR/src" "$LLAMA_DIR/app"
  mkdir -p "$LLAMA_DIR/src"
  tar xzf "$CACHE/dl/$SDIST.tar.gz" -C "$LLAMA_DIR/src"
  VENDOR="$LLAMA_DIR/src/$SDIST/vendor/llama.cpp"
  # shellcheck disable=SC2086
  cmake -S "$VENDOR" -B "$LLAMA_DIR/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON $LLAMA_CMAKE_FLAGS >"$LLAMA_DIR/cmake.log" 2>&1
  # shellcheck disable=SC2086
  cmake --build "$LLAMA_DIR/build" --target $LLAMA_TOOLS -j"$(nproc)" >>"$LLAMA_DIR/cmake.log" 2>&1 \
    || { tail -n 40 "$LLAMA_DIR/cmake.log" >&2; exit 1; }
  # /app mirrors the official llama.cpp image: converter, gguf-py and the llama-* tools.
  mkdir -p "$LLAMA_DIR/app"
  cp -r "$VENDOR/convert_hf_to_gguf.py" "$VENDOR/conversion" "$VENDOR/gguf-py" "$LLAMA_DIR/app/"
  for tool in $LLAMA_TOOLS; do cp "$LLAMA_DIR/build/bin/$tool" "$LLAMA_DIR/app/"; done
  touch "$LLAMA_DIR/.done"
fi

# --- Tools venv: torch (CPU, from local disk) first, then LLaMA-Factory and llama-cpp-python ---
TOOLS_VENV="$CACHE/venv-tools-$(key "$ROOT/.ci/tools-requirements.txt" "$ROOT/.ci/versions.env")"
if [ ! -f "$TOOLS_VENV/.done" ]; then
  log "building $TOOLS_VENV (torch $TORCH_VERSION, llamafactory; ~5 min)"
  rm -rf "$TOOLS_VENV"
  "$PY" -m venv "$TOOLS_VENV"
  echo "torch==$TORCH_VERSION" >"$CACHE/torch-constraint.txt"
  "$TOOLS_VENV/bin/pip" install -q "torch==$TORCH_VERSION" 2>&1 | quiet_pip
  "$TOOLS_VENV/bin/pip" install -q -c "$CACHE/torch-constraint.txt" -r "$ROOT/.ci/tools-requirements.txt" 2>&1 | quiet_pip
  # CUDA-only wheels dragged in by llamafactory break `import transformers` on CPU.
  "$TOOLS_VENV/bin/pip" uninstall -y -q torchvision torchaudio 2>&1 | quiet_pip
  # The Python binding without compiling llama.cpp again: reuse the libraries built above.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$TOOLS_VENV/bin/pip" install -q --no-deps \
    -c "$CACHE/torch-constraint.txt" "$CACHE/dl/$SDIST.tar.gz" 2>&1 | quiet_pip
  "$TOOLS_VENV/bin/pip" install -q -c "$CACHE/torch-constraint.txt" diskcache jinja2 typing-extensions 2>&1 | quiet_pip
  LIBDIR=$("$TOOLS_VENV/bin/python" -c 'import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec("llama_cpp").origin),"lib"))')
  mkdir -p "$LIBDIR"
  cp -a "$LLAMA_DIR"/build/bin/*.so* "$LIBDIR/"
  "$TOOLS_VENV/bin/python" -c 'import llama_cpp, transformers, peft; print("tools venv ok")' >&2
  touch "$TOOLS_VENV/.done"
fi

# --- Ray (the training queue's cluster tests start a real head and worker nodes with it) -------------
RAY_VENV="$CACHE/venv-ray-$(key "$ROOT/.ci/ray-requirements.txt")"
if [ ! -f "$RAY_VENV/.done" ]; then
  log "building $RAY_VENV (ray[default]; ~1 min)"
  rm -rf "$RAY_VENV"
  "$PY" -m venv "$RAY_VENV"
  "$RAY_VENV/bin/pip" install -q -r "$ROOT/.ci/ray-requirements.txt" 2>&1 | quiet_pip
  "$RAY_VENV/bin/python" -c 'import ray; print("ray", ray.__version__)' >&2
  touch "$RAY_VENV/.done"
fi

# --- Tiny-model zoo: real tokenizers from llama.cpp's vocab GGUFs, real LoRA training (~6 min) ---------
ZOO="$CACHE/zoo-$(key "$ROOT/tests/tools/make_zoo.py" "$ROOT/.ci/versions.env" "$ROOT/.ci/tools-requirements.txt")"
if [ ! -f "$ZOO/.done" ]; then
  log "building the model zoo $ZOO (llama3, qwen2, llama2; real llamafactory-cli training on CPU, ~6 min)"
  rm -rf "$ZOO"
  mkdir -p "$ZOO"
  PYTHONPATH="$ROOT/tests/tools/shims" HF_HUB_OFFLINE=1 "$TOOLS_VENV/bin/python" "$ROOT/tests/tools/make_zoo.py" "$ZOO" \
    --vocab-dir "$LLAMA_DIR/src/$SDIST/vendor/llama.cpp/models" >"$ZOO/build.log" 2>&1 \
    || { tail -n 40 "$ZOO/build.log" >&2; exit 1; }
  touch "$ZOO/.done"
fi

cat <<EOF
export TUNEDECK_CACHE="$CACHE"
export TUNEDECK_ZOO="$ZOO"
export TUNEDECK_APP_VENV="$APP_VENV"
export TUNEDECK_TOOLS_VENV="$TOOLS_VENV"
export TUNEDECK_RAY_VENV="$RAY_VENV"
export TUNEDECK_LLAMACPP_APP="$LLAMA_DIR/app"
export TUNEDECK_LLAMACPP_LIBS="$LLAMA_DIR/build/bin"
EOF
