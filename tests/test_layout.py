"""The layout: every module under exactly one name, layers without cycles, a wheel that
holds only the package, and a command that starts without torch."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"gpufocus": ROOT / "gpufocus", "gpufocus.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    """Every module of the package, by its one dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def test_every_module_is_imported_once_under_one_name():
    # In a fresh interpreter run from the checkout (as pytest and `python cli.py` are),
    # import everything; then no file may stand behind two module names.
    names = [n for n in _modules() if not n.split(".")[-1].startswith("_triton")]  # need Triton to import
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "for name, module in list(sys.modules.items()):\n"
        "    print(name, getattr(module, '__file__', None))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    by_file: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        name, file = line.split(" ", 1)
        if file != "None" and any(Path(file).resolve().is_relative_to(folder) for folder in SOURCES.values()):
            by_file.setdefault(os.path.realpath(file), []).append(name)
    assert {f: n for f, n in by_file.items() if len(n) > 1} == {}
    assert set(names) <= {n for ns in by_file.values() for n in ns}
    # kernels/ sits on sys.path too when run from the checkout: it refuses that name.
    other = subprocess.run([sys.executable, "-c", "import kernels"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode != 0 and "import it as such" in other.stderr


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles_and_kernels_below_the_package():
    modules = _modules()
    graph = {name: _imports(name, path) for name, path in modules.items()}
    for name in modules:
        if name.startswith("gpufocus.kernels"):
            above = {m for m in graph[name] if not m.startswith("gpufocus.kernels")}
            assert above == set(), f"{name} imports {above}: kernels may only use what is below them"
    # A cycle: some module reaches itself. Package __init__ files are left out: importing
    # gpufocus.x always runs gpufocus/__init__.py, which imports only gpufocus.errors.
    plain = {n: {m for m in deps if modules[m].stem != "__init__"} for n, deps in graph.items()}
    for start in plain:
        seen, todo = set(), list(plain[start])
        while todo:
            current = todo.pop()
            assert current != start, f"import cycle through {start}"
            if current not in seen:
                seen.add(current)
                todo.extend(plain[current])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["fuse", "--help"], ["batch", "--help"], ["bench", "--help"]])
def test_help_and_version_do_not_load_torch(args):
    script = (
        "import sys\n"
        f"sys.argv = ['gpufocus', *{args!r}]\n"
        "from gpufocus.__main__ import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print('heavy:', sorted({'torch', 'kornia', 'tifffile', 'imagecodecs', 'rawpy', 'numpy', 'PIL'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "heavy: []", done.stdout[-300:]


def test_a_fuse_on_the_cpu_imports_no_compiler_stack(tmp_path):
    """torchvision (nvJPEG, CUDA only) pulls torch._dynamo, sympy and torch.distributed's
    peers into a process: seconds of start-up that a CPU fuse must not pay."""
    from gpufocus.synth import make_stack, write_stack

    write_stack(make_stack(40, 48, 3, max_blur=2.0, seed=1), tmp_path / "s")
    script = (
        "import sys, atexit\n"
        "heavy = ('torchvision', 'torch._dynamo', 'sympy', 'triton', 'kornia')\n"
        f"atexit.register(lambda: open({str(tmp_path / 'modules.txt')!r}, 'w').write("
        "' '.join(m for m in heavy if m in sys.modules) + '|' + str('torch' in sys.modules)))\n"
        f"sys.argv = ['gpufocus', 'fuse', {str(tmp_path / 's')!r}, '-o', {str(tmp_path / 'out.png')!r}, '--device', 'cpu']\n"
        "from gpufocus.__main__ import main\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "modules.txt").read_text() == "|True"  # torch, and none of the others


def test_bad_input_is_refused_before_torch_loads(tmp_path):
    script = (
        "import sys, atexit\n"
        f"atexit.register(lambda: open({str(tmp_path / 'modules.txt')!r}, 'w').write(str('torch' in sys.modules)))\n"
        f"sys.argv = ['gpufocus', 'fuse', {str(tmp_path / 'missing.jpg')!r}, 'b.jpg', '-o', 'out.png']\n"
        "from gpufocus.__main__ import main\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and (tmp_path / "modules.txt").read_text() == "False"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    return next(out.glob("gpufocus-*.whl"))


def test_the_wheel_holds_each_module_once_under_gpufocus(wheel):
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("gpufocus-")]
    assert len(names) == len(set(names))
    assert {n.split("/")[0] for n in names} == {"gpufocus"}
    expected = {f"{name.replace('.', '/')}{'/__init__' if path.stem == '__init__' else ''}.py"
                for name, path in _modules().items()}
    expected = {e.replace("/__init__/__init__", "/__init__") for e in expected}
    assert set(names) == expected


def test_the_wheel_needs_no_opencv_and_offers_raw_as_an_extra(wheel):
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    plain = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert plain == {"torch", "kornia", "numpy", "pillow", "typer", "tifffile", "imagecodecs"}
    assert any(r.startswith("rawpy") and "extra == \"raw\"" in r for r in requires), requires


def test_the_installed_command_runs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import gpufocus.cli, gpufocus.kernels; print(gpufocus.cli.__file__, gpufocus.kernels.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert all(path.startswith(str(site)) for path in where.stdout.split())
    for command in ([str(site / "bin" / "gpufocus"), "--version"], [sys.executable, "-m", "gpufocus", "--version"]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip().startswith("gpufocus "), done.stderr
