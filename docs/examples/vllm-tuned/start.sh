#!/bin/sh
# Start vLLM as the Cacheon miner contract asks (docs/miner-guide.md): listen on 0.0.0.0:$PORT,
# serve $MODEL_PATH (read-only, no network) under $SERVED_MODEL_NAME with $MAX_MODEL_LEN.
# The root filesystem is read-only: caches go to the tmpfs /tmp and /root/.cache.
set -eu
: "${PORT:=8000}"
: "${MODEL_PATH:?MODEL_PATH is not set}"
: "${SERVED_MODEL_NAME:?SERVED_MODEL_NAME is not set}"
: "${MAX_MODEL_LEN:?MAX_MODEL_LEN is not set}"
export HF_HUB_OFFLINE=1 VLLM_CACHE_ROOT=/tmp/vllm XDG_CACHE_HOME=/tmp/cache
# Tuned flags, each a starting point to measure with `cacheon-miner check`:
#   --generation-config vllm   the request's sampling fields only, never the model's
#                              generation_config.json defaults (a repetition penalty there would
#                              change greedy tokens and fail greedy consistency);
#   --enable-prefix-caching    the chat template's shared prefix is computed once;
#   --max-num-seqs 128         room for the highest concurrency level (64) and its warm-up;
#   --gpu-memory-utilization   more KV cache, fewer preemptions at 64 concurrent requests.
exec vllm serve "$MODEL_PATH" \
  --host 0.0.0.0 \
  --port "$PORT" \
  --served-model-name "$SERVED_MODEL_NAME" \
  --max-model-len "$MAX_MODEL_LEN" \
  --tensor-parallel-size "${TENSOR_PARALLEL_SIZE:-8}" \
  --dtype bfloat16 \
  --generation-config vllm \
  --enable-prefix-caching \
  --max-num-seqs 128 \
  --gpu-memory-utilization 0.92
