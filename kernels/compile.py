"""Compile every Triton kernel, in every specialization the dispatcher launches, for a
GPU, on any machine: no GPU is needed (Triton brings its own ``ptxas``).

    python -m gpufocus.kernels.compile --target sm_90 [--target sm_80]

Prints one line per kernel and specialization (warps a program, registers, spilled
bytes, shared memory, and the time ``triton.compile`` took: compiling, or finding it in
Triton's cache) and exits non-zero if any fails. The arguments of each
specialization come from the same functions that build the real launches
(``*_launch``), fed with tensors on the meta device, so this checks what runs: Triton's
interpreter accepts Python the compiled language does not (lists, say), and only a
compile shows that.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Specialization", "specializations", "compile_one", "main"]

_TYPES = {torch.float32: "fp32", torch.uint8: "u8", torch.int32: "i32", torch.bool: "u8"}


@dataclass
class Specialization:
    """One kernel as the dispatcher launches it: its name, the JIT function, the launch's
    positional arguments and its constexprs."""

    name: str
    kernel: object
    args: tuple
    constexprs: dict
    warps: int = 4

    def signature(self) -> tuple[dict, dict]:
        """Triton's ``signature`` and ``attrs`` for ``ASTSource``: every pointer taken as
        16-byte aligned (torch's allocations are), integers as 32-bit."""
        names = self.kernel.arg_names
        signature, attrs = {}, {}
        for position, (name, value) in enumerate(zip(names, self.args)):
            if isinstance(value, torch.Tensor):
                signature[name] = "*" + _TYPES[value.dtype]
                attrs[(position,)] = [["tt.divisibility", 16]]
            elif isinstance(value, bool) or isinstance(value, int):
                signature[name] = "i32" if -(2**31) <= int(value) < 2**31 else "i64"
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                raise TypeError(f"{self.name}: argument {name} of type {type(value).__name__}")
        for name in self.constexprs:
            signature[name] = "constexpr"
        return signature, attrs


def specializations() -> Iterator[Specialization]:
    """Every kernel the dispatcher can launch, once per specialization."""
    from . import _triton_noise as noise
    from . import _triton_pyramid as pyramid
    from . import _triton_select as select
    from . import _triton_warp as warp

    meta = dict(device="meta", dtype=torch.float32)
    g, coarse = torch.empty(2, 3, 33, 47, **meta), torch.empty(2, 3, 17, 24, **meta)
    _, args, constexprs = pyramid.pyr_down_launch(g, coarse)
    yield Specialization("pyr_down", pyramid._pyr_down_kernel, args, constexprs)
    _, args, constexprs = pyramid.pyr_down_launch(g, torch.empty(2, 1, 17, 24, **meta))
    yield Specialization("pyr_down[luma]", pyramid._pyr_down_kernel, args, constexprs)
    for affine in (True, False):
        _, args, constexprs = warp.grid_launch(
            torch.empty(3, 3, **meta), torch.empty(33, 47, 2, **meta), torch.empty(33, 47, device="meta", dtype=torch.uint8),
            affine, (5, 7, 33, 47), (40, 60),
        )
        yield Specialization(f"sampling_grid[{'affine' if affine else 'projective'}]", warp._grid_kernel, args, constexprs)
    for measure, label in ((pyramid.DETAIL, "detail"), (pyramid.LUMA, "luma"), (pyramid.MEAN, "mean")):
        out = torch.empty(2, 3 if measure == pyramid.DETAIL else 1, 33, 47, **meta)
        _, args, constexprs = pyramid.detail_launch(g, coarse, out, measure)
        yield Specialization(f"detail[{label}]", pyramid._detail_kernel, args, constexprs)
    for measure, label in ((pyramid.DETAIL, "channels"), (pyramid.LUMA, "luma"), (pyramid.MEAN, "mean")):
        out = torch.empty(2, 3 if measure == pyramid.DETAIL else 1, 2, 43, **meta)
        _, args, constexprs = noise.noise_launch(g, out, measure, 16)
        yield Specialization(f"noise[{label}]", noise._noise_kernel, args, constexprs)
    measure, taps = torch.empty(2, 1, 33, 47, **meta), torch.empty(9, **meta)
    score, value = torch.empty(1, 1, 33, 47, **meta), torch.empty(1, 3, 33, 47, **meta)
    index = torch.empty(1, 1, 33, 47, device="meta", dtype=torch.int32)
    energy = torch.empty(2, 1, 33, 47, **meta)
    halo = {"coarse_energy": torch.empty(2, 1, 17, 24, **meta), "score": score, "value": value, "index": index,
            "own": score, "has_state": True, "sharpness": 0.2, "half_share": 0.5}
    # What the rules launch: plain; with the winners' index (halo control, steps); with
    # the energies written out (the level the halo guard reads); the halo guard's level.
    modes = {"plain": {}, "index": {"index": index}, "energy": {"energy_out": energy},
             "energy+index": {"index": index, "energy_out": energy}, "halo": {"index": index, "halo": halo}}
    for half in (False, True):
        _, args, constexprs = select.squares_launch(measure, measure, measure if half else None, taps)
        yield Specialization(f"squares[{'columns, rows' if half else 'columns'}]", select._squares_kernel, args,
                             constexprs)
    for usable in (None, torch.empty(2, 1, 33, 47, device="meta", dtype=torch.uint8)):
        for mode, extra in modes.items():
            _, args, constexprs = select.fold_launch(
                measure, measure if "halo" in extra else None, g, coarse, taps, usable, 0, score, value,
                extra.get("index"), True, extra.get("energy_out"), extra.get("halo"),
            )
            label = mode + (", usable" if usable is not None else "")
            yield Specialization(f"fold[{label}]", select._fold_kernel, args, constexprs,
                                 select.fold_warps("halo" in extra))


def _ptxas(arch: int) -> str | None:
    """Triton's own ptxas for ``arch`` (its location moved between Triton versions)."""
    from triton.backends.nvidia import compiler

    if hasattr(compiler, "get_ptxas"):
        return compiler.get_ptxas(arch).path
    if hasattr(compiler, "_path_to_binary"):
        return compiler._path_to_binary("ptxas")[0]
    return None


def _resources(ptx: str, arch: int) -> str:
    """Registers and spills as ``ptxas -v`` reports them."""
    ptxas = _ptxas(arch)
    if ptxas is None:
        return "registers ?"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        report = subprocess.run(
            [ptxas, "-v", f"--gpu-name={arch_name}", str(source), "-o", str(Path(folder) / "kernel.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return (f"{registers.group(1) if registers else '?'} registers, "
            f"spills {spills.group(1) if spills else '?'}/{spills.group(2) if spills else '?'} B")


def compile_one(spec: Specialization, arch: int) -> str:
    """Compile ``spec`` for ``sm_<arch>`` to a cubin; one line describing it. Raises on failure."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = spec.signature()
    source = ASTSource(fn=spec.kernel, signature=signature, constexprs=spec.constexprs, attrs=attrs)
    options = {"enable_fp_fusion": False, "num_warps": spec.warps}
    started = time.perf_counter()
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - started
    if not compiled.asm.get("cubin"):
        raise RuntimeError("no cubin")
    return (f"{spec.name}: {spec.warps} warps, {_resources(compiled.asm['ptx'], arch)}, "
            f"shared {compiled.metadata.shared} B, {seconds * 1e3:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", default=None, help="sm_90 (the default), sm_80, ...; repeatable")
    targets = parser.parse_args(argv).target or ["sm_90"]
    failures = 0
    for target in targets:
        if not re.fullmatch(r"sm_\d+", target):
            parser.error(f"--target {target}: use sm_<compute capability>, e.g. sm_90")
        arch = int(target[3:])
        for spec in specializations():
            try:
                line = compile_one(spec, arch)
            except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
                failures += 1
                first = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                print(f"{target} FAILED {spec.name}: {type(error).__name__}: {first}")
            else:
                print(f"{target} ok {line}")
    print(f"{failures} failed" if failures else "all kernels compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
