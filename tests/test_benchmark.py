import statistics

import torch

from gpufocus.benchmark import Case, bench_frames, cuda_vs_cpu, run_case, to_markdown


def result(device, seconds, frames=10, kind="core"):
    return {"kind": kind, "device": device, "width": 64, "height": 48, "frames": frames, "dtype": "float32",
            "method": "max-energy", "align": True, "seconds": seconds}


def test_cuda_results_are_paired_with_the_same_cpu_case():
    results = [result("cpu", 8.0), result("cpu", 30.0, frames=30), result("cuda", 0.5), result("cuda:1", 1.0, 30)]
    pairs = cuda_vs_cpu(results)
    assert [(p["frames"], p["speedup"]) for p in pairs] == [(10, 16.0), (30, 30.0)]
    assert cuda_vs_cpu([result("cpu", 1.0), result("cuda", 1.0, kind="e2e")]) == []


def test_bench_frames_are_distinct_and_deterministic():
    a, b = bench_frames(48, 64, 3), bench_frames(48, 64, 3)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 48, 64)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_run_case_in_process(tmp_path):
    report = run_case(Case("e2e", "cpu", 64, 48, 3, "float32", 2, "max-energy", True), repeat=2, warmup=0, cache=tmp_path)
    assert len(report["runs"]) == 2 and report["chunk"] == 2
    # the CPU's timer synchronises nothing: the runs that time the stages time the whole
    assert report["staged_seconds"] == report["seconds"] == statistics.median(report["runs"])
    assert report["stages"]["decode"] > 0 and report["stages"]["encode"] > 0 and report["stages"]["align"] > 0
    markdown = to_markdown({"machine": "m", "date": "d", "results": [report], "cuda_vs_cpu": []})
    assert "| e2e | cpu | on | float32 | 2 | 3 | 64x48 |" in markdown
