"""The house's floors: every module imports only its own floor or floors below it, and no
imports run in a circle.

Floors, lowest first (README "What is where"):

    core      arrays, tensor, function, state  which library holds an array; the autograd
                                               engine; the strict-load check
    backend   backend, geometry, mapped_files  which array library computes; window geometry;
                                               the native libraries the process has loaded
    ops       tinybn.ops                       the reference ops, named like tf.nn
    nn        tinybn.nn                        Module, layers, BatchNorm
    optim     optim, moving_averages, lookahead  TF1 optimizers, PyTorch's SGD, schedules, EMA,
                                               the fast recipe's Lookahead average
    api       tinybn (the package root)        re-exports core, backend, ops, nn, optim
    models    tinybn.models                    CIFAR-10, MNIST, ResNet-V2 networks
    data      tinybn.data                      readers, download, preprocessing, input queues
    distributed  tinybn.distributed            MPI world, gradient buckets, data parallelism
    training  training, metrics, checkpoint*, summary, csv_log, progress, run_dirs, gradcheck
    tasks     tinybn.tasks                     per task: model, optimizer, inputs
    cli       train, eval, bench, export, cli_flags   the commands under python -m

The kernels (kernels/, installed as tinybn.kernels) stand beside the floors: they import
only the backend's registry, the geometry module, mapped_files, each other, and numpy,
numba or cupy, so that a kernel module loads without the rest of the package.

Imports are read with `ast` from the source, top-level and function-level alike (a late
import inside a function is still an edge of the graph), and `from . import x` is resolved
to the submodule it names.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOORS = [
    ("core", ["tinybn.arrays", "tinybn.tensor", "tinybn.function", "tinybn.state"]),
    ("backend", ["tinybn.backend", "tinybn.geometry", "tinybn.mapped_files"]),
    ("ops", ["tinybn.ops"]),
    ("nn", ["tinybn.nn"]),
    ("optim", ["tinybn.optim", "tinybn.moving_averages", "tinybn.lookahead"]),
    ("api", ["tinybn"]),
    ("models", ["tinybn.models"]),
    ("data", ["tinybn.data"]),
    ("distributed", ["tinybn.distributed"]),
    ("training", ["tinybn.training", "tinybn.metrics", "tinybn.checkpoint", "tinybn.checkpoint_manager",
                  "tinybn.summary", "tinybn.csv_log", "tinybn.progress", "tinybn.run_dirs", "tinybn.gradcheck",
                  "tinybn.evaluation", "tinybn.stop_flag", "tinybn.train_summaries", "tinybn.profiler"]),
    ("tasks", ["tinybn.tasks"]),
    ("cli", ["tinybn.train", "tinybn.eval", "tinybn.bench", "tinybn.export", "tinybn.cli_flags",
             "tinybn.__main__"]),
]
KERNELS = "tinybn.kernels"
KERNEL_MAY_IMPORT = ("tinybn.backend", "tinybn.geometry", "tinybn.mapped_files", KERNELS)
KERNEL_LIBRARIES = {"numpy", "numba", "cupy"}


def source_modules(root=ROOT):
    """{module name: path} of tinybn/ and kernels/ (which is installed as tinybn.kernels)."""
    modules = {}
    for folder, package in (("tinybn", "tinybn"), ("kernels", KERNELS)):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(root, folder))
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in filenames:
                if name.endswith(".py"):
                    modules[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = \
                        os.path.join(dirpath, name)
    return modules


def imports_of(module, path, known):
    """Every module `module` imports (absolute names), from its source, at any depth."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:     # `from pkg import sub` imports the submodule pkg.sub
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def import_graph(modules):
    """{module: set of modules it imports}, for every module of `modules`."""
    known = set(modules)
    return {m: imports_of(m, path, known) for m, path in modules.items()}


def floor_of(module, floors=FLOORS):
    """The index of `module`'s floor (the longest matching prefix; the package root "tinybn"
    names only itself, so a new module is on no floor until it is given one), or None."""
    best = None
    for i, (_, prefixes) in enumerate(floors):
        for p in prefixes:
            matches = module == p or (p != "tinybn" and module.startswith(p + "."))
            if matches and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def upward_imports(graph, floors=FLOORS):
    """'a -> b' for every import of a higher floor's module, or of what kernels may not import."""
    problems = []
    for module, targets in sorted(graph.items()):
        kernel = module == KERNELS or module.startswith(KERNELS + ".")
        for target in sorted(targets):
            if kernel:
                top = target.split(".")[0]
                if top == "tinybn" and not any(target == p or target.startswith(p + ".")
                                               for p in KERNEL_MAY_IMPORT):
                    problems.append(f"{module} -> {target} (kernels import only {', '.join(KERNEL_MAY_IMPORT)})")
                continue
            if not (target == "tinybn" or target.startswith("tinybn.")):
                continue
            if target == KERNELS or target.startswith(KERNELS + "."):
                continue        # the backend loads them, by name, on first use
            mine, theirs = floor_of(module, floors), floor_of(target, floors)
            if theirs is not None and mine is not None and theirs > mine:
                problems.append(f"{module} ({floors[mine][0]}) -> {target} ({floors[theirs][0]})")
    return problems


def circles(graph):
    """The import circles of `graph`: its strongly connected components of more than one module
    (or a module importing itself), by Tarjan's algorithm, iteratively."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    nodes = sorted(graph)

    def edges(v):
        return sorted(t for t in graph[v] if t in graph)

    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges(root)))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        u = stack.pop()
                        on_stack.discard(u)
                        component.append(u)
                        if u == v:
                            break
                    if len(component) > 1 or v in graph[v]:
                        found.append(sorted(component))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on_stack.add(w)
                work.append((w, iter(edges(w))))
            elif w in on_stack:
                low[v] = min(low[v], index[w])
    return sorted(found)


@pytest.fixture(scope="module")
def graph():
    return import_graph(source_modules())


def test_every_module_has_a_floor(graph):
    homeless = [m for m in graph if floor_of(m) is None and not m.startswith(KERNELS)]
    assert homeless == [], "modules on no floor (add them to FLOORS and to the README): " + ", ".join(homeless)


def test_no_module_imports_a_higher_floor(graph):
    assert upward_imports(graph) == []


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_kernels_import_only_the_registry_geometry_and_array_libraries(graph):
    stdlib_ok = {"os", "sys", "math", "re", "ctypes", "functools", "hashlib", "importlib", "shutil",
                 "subprocess", "tempfile", "threading", "warnings", "glob", "typing", "collections"}
    for module, targets in graph.items():
        if module.startswith(KERNELS):
            outside = {t.split(".")[0] for t in targets} - {"tinybn"} - KERNEL_LIBRARIES - stdlib_ok
            assert not outside, f"{module} imports {sorted(outside)}"


def test_the_checks_find_what_they_look_for():
    """A made-up tree: an op importing nn (up a floor), a kernel importing tinybn.ops, a circle
    through a function-level import, and a relative `from .. import x` resolved to its module."""
    graph = {
        "tinybn.tensor": {"numpy"},
        "tinybn.function": {"tinybn.tensor"},
        "tinybn.ops.basic": {"tinybn.function", "tinybn.nn.module"},
        "tinybn.nn.module": {"tinybn.ops.basic"},
        "tinybn.kernels.numba_pool": {"tinybn.backend", "tinybn.ops.pool", "numba"},
        "tinybn.backend": set(),
        "tinybn.ops.pool": {"tinybn.backend"},
    }
    assert upward_imports(graph) == [
        "tinybn.kernels.numba_pool -> tinybn.ops.pool (kernels import only tinybn.backend, tinybn.geometry, "
        "tinybn.mapped_files, tinybn.kernels)",
        "tinybn.ops.basic (ops) -> tinybn.nn.module (nn)"]
    assert circles(graph) == [["tinybn.nn.module", "tinybn.ops.basic"]]


def test_relative_and_function_level_imports_are_read(tmp_path):
    pkg = tmp_path / "tinybn" / "ops"
    pkg.mkdir(parents=True)
    (tmp_path / "tinybn" / "__init__.py").write_text("")
    (tmp_path / "tinybn" / "backend.py").write_text("")
    (tmp_path / "tinybn" / "training.py").write_text("")
    (pkg / "__init__.py").write_text("from .conv import conv2d\n")
    (pkg / "conv.py").write_text("from .. import backend\n\ndef f():\n    from ..training import x\n")
    (tmp_path / "kernels").mkdir()
    graph = import_graph(source_modules(str(tmp_path)))
    assert graph["tinybn.ops.conv"] == {"tinybn.backend", "tinybn.training"}
    assert graph["tinybn.ops"] == {"tinybn.ops.conv"}
    assert upward_imports(graph) == ["tinybn.ops.conv (ops) -> tinybn.training (training)"]
