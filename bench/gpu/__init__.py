"""The GPU bench server, in the layers an inference engine has: `model` builds the seeded random
Qwen2, `runner` runs its forward over a slot-based KV cache (eager or as CUDA graphs), `engine`
batches requests into runner steps on a thread of its own, `server` speaks HTTP and records the
timestamps, and `tokens` is the byte-level tokenisation they share. `bench/gpu_server.py` is the
command line that puts them together.

Each layer sees only the one below through a narrow surface (the engine drives any
`ModelRunner`; the server drives an `Engine`), so a runner split over several GPUs, or an engine
step slowed by a known amount, replaces one layer and leaves the others as they are.
"""
