"""The GPU bench server, in the layers an inference engine has: `model` draws the seeded random
Qwen2 (whole, or one tensor-parallel rank's shard), `runner` runs its forward over a slot-based KV
cache (eager or as CUDA graphs, on one device or as one rank), `tp` starts and joins the
tensor-parallel processes, `engine` batches requests into runner steps on a thread of its own
(and stretches them for a known slowdown), `server` speaks HTTP and records the timestamps, and
`tokens` is the byte-level tokenisation they share. `bench/gpu_server.py` is the command line
that puts them together.

Each layer sees only the one below through a narrow surface (the engine drives any
`ModelRunner`; the server drives an `Engine`), so a runner split over several GPUs replaces one
layer and leaves the others as they are.
"""
