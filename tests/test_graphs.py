"""gpufocus.graphs: a function replayed as a CUDA graph. Without a GPU, a stand-in graph
that records the function and runs it again at each replay, writing into the same
outputs, as a CUDA graph does; and a check that the graphed estimation does nothing a
capture cannot hold (no copy from the host, no read back)."""

import contextlib
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gpufocus import AlignOptions
from gpufocus.align import StackAligner, _chunk_steps, _reduced
from gpufocus.graphs import GraphedFunction, GraphFallbackWarning, _Graph
from gpufocus.synth import make_stack


class StandIn:
    """A graph on the CPU: the outputs are tensors of its own, rewritten by each replay
    from what the captured inputs hold then."""

    made = replays = 0

    def __init__(self, fn, static, inputs):
        self.fn, self.static, self.inputs = fn, static, inputs
        self.outputs = tuple(torch.empty_like(out) for out in fn(static, *inputs))  # filled by replays
        StandIn.made += 1

    def replay(self):
        StandIn.replays += 1
        for out, new in zip(self.outputs, self.fn(self.static, *self.inputs)):
            out.copy_(new)


def stand_in(fn, static, inputs):
    graph = StandIn(fn, static, inputs)
    return _Graph(graph, inputs, graph.outputs)


def test_run_once_then_captured_then_replayed_with_each_calls_inputs():
    calls = []

    def fn(static, a, b):
        calls.append(static)
        return a * static + b, (a - b).sum(-1)

    graphed = GraphedFunction(fn, "a test", capture=stand_in)
    StandIn.made = 0
    results = []
    for seed in range(4):
        a, b = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(seed)).unbind(0)
        results.append((graphed(2.0, a, b), fn(2.0, a, b)))
    assert StandIn.made == 1  # run as it is, captured, then replayed
    for got, expected in results:
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert results[2][0][0] is not results[3][0][0]  # copied out: the next replay does not change it
    graphed(2.0, torch.rand(4, 5), torch.rand(4, 5))  # another shape: run as it is first
    graphed(3.0, *torch.rand(2, 3, 5).unbind(0))  # other settings too
    assert StandIn.made == 1


def test_the_last_graphs_used_are_kept():
    graphed = GraphedFunction(lambda static, a: (a * 2,), "a test", keep=2, capture=stand_in)
    StandIn.made = 0
    shapes = {name: torch.ones(size) for name, size in (("a", 1), ("b", 2), ("c", 3))}
    for name in "aabbaacc":  # a and b captured; a used again, so b is the least recent when c comes
        assert torch.equal(graphed(None, shapes[name])[0], shapes[name] * 2)
    assert StandIn.made == 3
    graphed(None, shapes["a"])  # kept: replayed
    assert StandIn.made == 3
    graphed(None, shapes["b"])  # let go: run as it is again, then captured anew
    graphed(None, shapes["b"])
    assert StandIn.made == 4


def test_a_capture_that_fails_warns_once_and_runs_as_it_is_from_then_on():
    def refuse(fn, static, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedFunction(lambda static, a: (a + 1,), "a test", capture=refuse)
    a = torch.zeros(3)
    graphed(None, a)
    with pytest.warns(GraphFallbackWarning, match="a test cannot be captured as a CUDA graph here"):
        assert torch.equal(graphed(None, a)[0], a + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(graphed(None, a)[0], a + 1)
    assert not graphed.active(torch.device("cuda"))


def test_off_the_gpu_and_when_turned_off_the_function_runs_as_it_is(monkeypatch):
    assert not GraphedFunction(lambda s, a: (a,), "x").active(torch.device("cpu"))
    monkeypatch.setenv("GPUFOCUS_CUDA_GRAPHS", "0")
    assert not GraphedFunction(lambda s, a: (a,), "x").active(torch.device("cuda"))
    assert not GraphedFunction(lambda s, a: (a,), "x", capture=stand_in).active(torch.device("cpu"))


@pytest.mark.parametrize("chunk, options, masked", [(3, {}, False), (4, {}, False), (3, {"global_align": True}, False),
                                                    (3, {}, True)])
def test_the_aligner_through_a_graph_gives_the_same_transforms(chunk, options, masked):
    """11 frames in chunks of 3 or 4: each chunk's luminance goes to the graph after its
    previous frame's (the first chunk's own first frame, whose pair is dropped), padded
    with copies of its last frame to the most a chunk has had, so that the first chunk
    runs as it is, the second captures the one graph and the others replay it. Every
    matrix, decision and reason is the plain aligner's, bit for bit; so are the refined
    ones of global alignment, whose features are made outside the graph; and with an
    alpha mask, whose opacity goes to the graph beside the luminance."""
    stack = make_stack(192, 256, 11, breathing=0.002, shift=1.5, rotation=0.3, max_blur=6.0, noise=1.0, seed=3)
    plain, graphed = StackAligner(AlignOptions(**options)), StackAligner(AlignOptions(**options))
    graphed._graphed = GraphedFunction(_chunk_steps, "the alignment's motion estimation", capture=stand_in)
    StandIn.made = StandIn.replays = 0
    for start in range(0, 11, chunk):
        frames = stack.frames[start : start + chunk].float() / 255
        mask = None
        if masked:  # a transparent band down the left side, a different width in each frame
            mask = torch.ones(len(frames), 1, 192, 256)
            for k in range(len(frames)):
                mask[k, :, :, : 20 + 3 * (start + k)] = 0
        for a, b in zip(plain.transforms(frames, start, mask), graphed.transforms(frames, start, mask)):
            assert torch.equal(a.matrix, b.matrix) and a.fallback == b.fallback
    assert StandIn.made == 1 and StandIn.replays == -(-11 // chunk) - 1


def test_after_a_failed_capture_the_chunks_go_on_without_the_graph():
    """The second chunk's capture fails: it and the chunks after it run as they are (the
    plain path makes the previous frame's features from its luminance), with the plain
    aligner's transforms."""

    def refuse(fn, static, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    stack = make_stack(192, 256, 9, breathing=0.002, shift=1.5, max_blur=6.0, seed=4)
    plain, graphed = StackAligner(AlignOptions()), StackAligner(AlignOptions())
    graphed._graphed = GraphedFunction(_chunk_steps, "the alignment's motion estimation", capture=refuse)
    with pytest.warns(GraphFallbackWarning):
        for start in range(0, 9, 3):
            frames = stack.frames[start : start + 3].float() / 255
            for a, b in zip(plain.transforms(frames, start), graphed.transforms(frames, start)):
                assert torch.equal(a.matrix, b.matrix)
    assert not graphed._graphed.active(torch.device("cpu"))


class _HostTraffic(TorchDispatchMode):
    """Records what a CUDA graph's capture cannot hold: a tensor copied from the host,
    a value read back to it."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors) or func.__name__.startswith(("_local_scalar_dense", "item")):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_graphed_estimation_neither_copies_from_the_host_nor_reads_back(monkeypatch):
    """On the meta device (shapes only), with torch.tensor and torch.as_tensor watched:
    a capture would fail on either (or bake in one chunk's values). With and without an
    alpha mask."""
    made = []
    for name in ("tensor", "as_tensor"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, **k: made.append(k.get("device")) or _real(*a, **k))
    frames, mask = torch.empty(5, 3, 768, 1024, device="meta"), torch.empty(5, 1, 768, 1024, device="meta")
    mode = _HostTraffic()
    for opaque in (None, mask):
        luma, spacing, small = _reduced(frames, AlignOptions().size, opaque)
        with mode:
            for model in ("translation", "similarity", "homography"):
                outputs = _chunk_steps((spacing, 768, 1024, model), luma, *([] if small is None else [small]))
                assert {o.device.type for o in outputs} == {"meta"} and outputs[0].shape == (4, 3, 3)
    assert mode.found == [] and made == []
    with mode:  # the check sees such a copy
        torch.ones(3).to("meta")
    assert mode.found == ["aten._to_copy.default"]


def test_the_capture_calls_torchs_graph_api_as_torch_cuda_graph_does(monkeypatch):
    """No GPU here: torch.cuda's graph and stream objects replaced by recorders whose
    calls are checked against the real methods' signatures. A capture that fails ends
    the capture and raises the function's own error."""
    import inspect

    from gpufocus import graphs

    calls = []

    def checked(cls, name):
        real = inspect.signature(getattr(cls, name))

        def method(self, *args, **kwargs):
            real.bind(self, *args, **kwargs)
            calls.append((name, kwargs))

        return method

    class Graph:
        capture_begin = checked(torch.cuda.CUDAGraph, "capture_begin")
        capture_end = checked(torch.cuda.CUDAGraph, "capture_end")

    class Stream:
        def __init__(self, device):
            calls.append(("stream", {}))

        wait_stream = checked(torch.cuda.Stream, "wait_stream")

    @contextlib.contextmanager
    def on(stream):
        calls.append(("on side stream", {}))
        try:
            yield
        finally:
            calls.append(("off side stream", {}))

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream(device))
    a = torch.ones(3)
    held = graphs.CODEC_CALLS.locked
    made = graphs._capture(lambda static, x: calls.append(("fn", {"codecs held": held()})) or (x * static,), 2.0, [a])
    assert torch.equal(made.outputs[0], a * 2) and made.inputs == [a]
    assert [name for name, _ in calls] == ["stream", "stream", "wait_stream", "on side stream", "capture_begin",
                                           "fn", "capture_end", "off side stream", "stream", "wait_stream"]
    assert calls[4][1] == {"capture_error_mode": "thread_local"}
    assert calls[5][1] == {"codecs held": True} and not held()  # no GPU codec works in another thread meanwhile
    calls.clear()

    def broken(static, x):
        raise ValueError("not capturable")

    with pytest.raises(ValueError, match="not capturable"):
        graphs._capture(broken, None, [a])
    assert [name for name, _ in calls][-3:] == ["capture_begin", "capture_end", "off side stream"] and not held()
