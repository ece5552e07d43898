"""The error contract under fuzzing: hundreds of damaged files through ``gpufocus fuse``.

Every case must end in a fused image or in one ``error:`` line that names the
damaged file, exit code 1 and nothing written; never another exception, never a
changed input, never a temporary left behind. bench/fuzz_cli.py runs the same cases
(and more) through the installed command, in processes of their own.
"""

import hashlib

import numpy as np
import pytest
from mutate import cases, seed_files
from PIL import Image
from typer.testing import CliRunner

from gpufocus.cli import app

CASES = 288  # 9 kinds x 8 mutations x 4


@pytest.fixture(scope="module")
def files():
    return seed_files()


def test_damaged_files_end_cleanly(tmp_path, files):
    runner = CliRunner()
    outcomes = {"fused": 0, "refused": 0}
    for n, (kind, suffix, mutation, data) in enumerate(cases(CASES, seed=9, files=files)):
        folder = tmp_path / f"case{n:03d}"
        folder.mkdir()
        good, bad = folder / f"a_good{suffix}", folder / f"b_bad{suffix}"
        good.write_bytes(files[kind])
        bad.write_bytes(data)
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        out = folder / "out.png"
        args = ["fuse", str(good), str(bad), "-o", str(out), "-q"] + (["--no-align"] if n % 2 else [])
        result = runner.invoke(app, args)
        where = f"case {n}: {kind} {mutation}"
        # An exception other than the exit Typer raises is a broken contract.
        assert result.exception is None or isinstance(result.exception, SystemExit), (where, result.exception)
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p != out}
        assert after == before, f"{where}: inputs changed or files left behind: {sorted(after)}"
        if result.exit_code == 0:
            with Image.open(out) as image:
                assert image.size == (48, 40), where
                assert np.asarray(image).std() > 0, where
            outcomes["fused"] += 1
        else:
            assert result.exit_code == 1, (where, result.exit_code)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), (where, result.stderr)
            assert not out.exists(), where
            outcomes["refused"] += 1
    # Both outcomes occur: the damage is neither always fatal nor always harmless.
    assert outcomes["fused"] > 20 and outcomes["refused"] > 100, outcomes
