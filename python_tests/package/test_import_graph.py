"""The import graph of covkernels: no cycle (issue 17, item 8) and the layering of docs/design.md (issue 25).
Every import statement counts, the lazy ones inside functions included, so the dependency arrows run one way.

The layers are defined once, in :data:`LAYERS` (bottom to top) and :data:`MODELS` (a side layer); the rules:

* a module imports only modules of its own layer or of layers below it;
* nothing above the dispatch layer imports a backend module (``ops/<op>/reference.py|triton.py|cpp.py``):
  the fused ops are reached through ``ops.dispatch`` / ``ops.library`` only. The one exception is the model
  zoo, whose analytic oracles compute in the reference's float64 math on purpose (an oracle must not run
  the code it is used to check);
* the models import only the foundation, the engine's pure helpers, the reference ops and the adapters (a
  shipped model of the kind users bring is wrapped the way a user would), and only the tools and the CLI
  import them;
* only ``covkernels._extension`` loads the compiled libraries, by full module name (no ``from . import _C``,
  which would go through the package root's lazy ``__getattr__``).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import covkernels

PACKAGE = Path(covkernels.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over covkernels' .py files; the compiled ``covkernels._C`` is a leaf.
    Edges to the package itself (``from . import __version__``) are left out: importing any submodule
    runs the package's ``__init__`` first anyway."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in files}
    graph["covkernels._C"] = set()
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in graph else module for a in node.names]
            graph[name].update(t for t in targets if t in graph and t not in (name, "covkernels"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_covkernels_modules():
    graph = import_graph()
    assert "covkernels.ops.dispatch" in graph and "covkernels._extension" in graph["covkernels.ops.dispatch"]
    assert "covkernels._extension" in graph["covkernels.executor"]
    assert cycles(graph) == []


# --- layering ----------------------------------------------------------------------------------------------
# Patterns: "a.b" is that module; "a.b.**" is a.b and every module under it; "*" is one name segment. A module
# belongs to the layer of its most specific pattern (most literal characters; an exact name wins a tie).
# Written for the layout after issue 25 (covkernels.steps and covkernels.eval packages) and the current one.
LAYERS = (  # bottom to top
    ("foundation", ("covkernels._version", "covkernels._extension", "covkernels._C")),
    ("backends", ("covkernels.ops.common", "covkernels.ops.*.reference", "covkernels.ops.*.triton",
                  "covkernels.ops.*.cpp")),
    # dispatch picks a backend; library registers the ops; any other module under ops/ sits here too
    ("dispatch", ("covkernels.ops.dispatch", "covkernels.ops.library", "covkernels.ops.**")),
    # what a step is made of besides the ops, and pure helpers (metrics: also the oracle models' scorers)
    ("engine", ("covkernels.jvp", "covkernels.executor", "covkernels.guidance", "covkernels.schedules",
                "covkernels.progress", "covkernels.metrics", "covkernels.eval.metrics")),
    # compiled_steps and capture are steps (the samplers call compiled_steps)
    ("steps", ("covkernels.steps.**", "covkernels.compiled_steps", "covkernels.capture")),
    ("samplers", ("covkernels.samplers.**", "covkernels.sampling")),
    ("adapters", ("covkernels.adapters.**",)),
    # the package root is a facade of public names: it may load anything below the CLI, never the CLI
    ("tools", ("covkernels", "covkernels.eval.**", "covkernels.evaluation", "covkernels.grid",
               "covkernels.testbeds", "covkernels.report", "covkernels.intervals", "covkernels.imageio",
               "covkernels.bench", "covkernels.system_info")),
    ("cli", ("covkernels.cli", "covkernels.cli_sample", "covkernels.__main__")),
)
MODELS = ("models", ("covkernels.models.**",))  # beside the stack
# of the backends, the reference modules only (see above); the adapters because a shipped model of the kind users
# bring (patches_flow: a rectified-flow network) is built with the public adapter, as a user would
MODELS_IMPORT = {"foundation", "backends", "engine", "adapters"}
MODELS_IMPORTED_BY = {"tools", "cli"}
BACKEND_MODULE = re.compile(r"covkernels\.ops\.[^.]+\.(reference|triton|cpp)$")
REFERENCE_MODULE = re.compile(r"covkernels\.ops\.[^.]+\.reference$")

# Edges that break the rules today, each with the change that removes it. The issue-25 merge empties this set
# (covkernels/steps/ and the samplers reach the kernels' helpers through dispatch): an entry that no longer
# occurs fails test_known_violations_are_still_real, so the set only shrinks.
# edges against the rules that are known and waiting for a fix (each one named and commented); empty since the
# issue-25 merge: the sampler side reaches the ops through ops.dispatch / ops.api only
KNOWN_VIOLATIONS: set = set()


def _pattern_regex(pattern: str) -> re.Pattern:
    body = pattern[:-3] if pattern.endswith(".**") else pattern
    regex = re.escape(body).replace(r"\*", r"[^.]+")
    return re.compile(regex + (r"(\..+)?$" if pattern.endswith(".**") else "$"))


def _specificity(pattern: str) -> tuple[int, bool]:
    literal = pattern.replace(".**", "").replace("*", "")
    return len(literal), "*" not in pattern


def layer_of(module: str) -> str | None:
    """The layer whose most specific pattern matches ``module``; None when no pattern does."""
    matches = [(_specificity(p), name) for name, patterns in (*LAYERS, MODELS) for p in patterns
               if _pattern_regex(p).match(module)]
    return max(matches)[1] if matches else None


RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def rule_broken(importer: str, target: str) -> str | None:
    """Which rule the edge ``importer -> target`` breaks, or None."""
    low, high = layer_of(target), layer_of(importer)
    if BACKEND_MODULE.match(target) and high not in ("backends", "dispatch"):
        if not (high == "models" and REFERENCE_MODULE.match(target)):
            return f"a backend module imported from the {high} layer (only dispatch picks backends)"
    if high == "models":
        return None if low in MODELS_IMPORT | {"models"} else f"models import only {sorted(MODELS_IMPORT)}"
    if low == "models":
        return None if high in MODELS_IMPORTED_BY else f"models are imported only by {sorted(MODELS_IMPORTED_BY)}"
    if RANK[low] > RANK[high]:
        return f"the {high} layer imports the {low} layer above it"
    return None


def layering_violations(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    return {(m, t): why for m in graph for t in graph[m] if (why := rule_broken(m, t)) is not None}


def test_the_layer_patterns_place_modules_as_intended():
    assert layer_of("covkernels.steps") == layer_of("covkernels.steps.lanczos") == "steps"
    assert layer_of("covkernels.eval") == layer_of("covkernels.eval.grid") == "tools"
    assert layer_of("covkernels.eval.metrics") == layer_of("covkernels.metrics") == "engine"
    assert layer_of("covkernels.ops.dct.triton") == "backends"
    assert layer_of("covkernels.ops.dispatch") == layer_of("covkernels.ops.streams") == "dispatch"
    assert layer_of("covkernels.models.gaussian") == "models" and layer_of("covkernels") == "tools"
    assert layer_of("covkernels.stepsize") is None  # "steps.**" is the package, not a name prefix


def test_the_checker_finds_each_kind_of_violation():
    assert rule_broken("covkernels.ops.dispatch", "covkernels.samplers.api")  # upward
    assert rule_broken("covkernels.samplers.api", "covkernels.ops.noise.triton")  # a backend above dispatch
    assert rule_broken("covkernels.eval.grid", "covkernels.ops.dct.reference")  # the reference too
    assert rule_broken("covkernels.steps.lanczos", "covkernels.models.gaussian")  # models from below the tools
    assert rule_broken("covkernels.models.gaussian", "covkernels.samplers")  # models importing the stack
    assert rule_broken("covkernels", "covkernels.cli")  # the package root never loads the CLI
    assert rule_broken("covkernels.models.mixture", "covkernels.ops.dct.reference") is None  # the oracles
    assert rule_broken("covkernels.ops.library", "covkernels.ops.dispatch") is None
    assert rule_broken("covkernels.cli", "covkernels.system_info") is None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if layer_of(m) is None)
    assert unplaced == [], f"add these modules to LAYERS (or MODELS) in {Path(__file__).name}: {unplaced}"


def test_no_new_layering_violation():
    found = layering_violations(import_graph())
    new = {edge: why for edge, why in found.items() if edge not in KNOWN_VIOLATIONS}
    assert new == {}, "imports against the layering (docs/design.md, 'Layers'):\n" + "\n".join(
        f"  {m} -> {t}: {why}" for (m, t), why in sorted(new.items()))


def test_known_violations_are_still_real():
    stale = KNOWN_VIOLATIONS - set(layering_violations(import_graph()))
    assert stale == set(), f"these edges are gone or allowed now: remove them from KNOWN_VIOLATIONS: {sorted(stale)}"


def test_only_the_extension_module_loads_the_compiled_libraries():
    graph = import_graph()
    loaders = sorted(m for m in graph if graph[m] & {"covkernels._C", "covkernels._C_cuda"})
    assert loaders == [], f"{loaders} import covkernels._C directly; ask covkernels._extension instead"
    assert "covkernels._extension" in graph["covkernels.ops.dispatch"]
    assert all("covkernels._extension" in graph[f"covkernels.ops.{op}.cpp"] for op in ("rng", "dct", "noise", "lanczos"))
