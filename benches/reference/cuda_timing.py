"""CUDA-event timing shared by the reference scripts (gemv_torch.py,
read_floor.py).

timed(fn, n, reps, iters, graph) is the median, over `reps` passes, of a
pass's time ÷ `iters`, where a pass calls fn(0), fn(1), ... fn(iters - 1)
modulo n (n rotating copies, so the working set exceeds the GPU's cache).
With `graph`, each pass is one CUDA graph of those calls: kernels run back
to back with no host launch cost. Without it, calls under ~20 us time
Python's launch rather than the GPU.
"""
import statistics

import torch


def timed(fn, n, reps, iters, graph=True):
    # Warm up (and let libraries allocate) on a side stream, as graph
    # capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(n):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = None
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(i % n)
        g.replay()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        if g is not None:
            g.replay()
        else:
            for i in range(iters):
                fn(i % n)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / iters)
    return statistics.median(times)
