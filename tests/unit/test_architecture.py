"""The layout's promises, read from the source with ``ast``: no import cycles, MLflow only
behind the tracker, private lm-eval/mergekit APIs only in app.compat, a standalone sweeper."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PRIVATE = ("_loglikelihood_tokens", "_encode_pair", "_instances", "_compute_task_aggregations",
           "_plan", "_tensors", "_model_out_config", "_index")


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (functions included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def test_the_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    assert len(g) > 20  # the walk really sees the project
    for node in sorted(g):
        if node not in state:
            visit(node, [node])


def test_a_made_up_cycle_is_found(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from b import x\n")
    assert imports(a, "a", {"a", "b"}) == {"b"}  # imports inside functions count


def test_only_the_tracking_package_imports_mlflow():
    offenders = [name for name, path in modules().items()
                 if not name.startswith("app.tracking")
                 and any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(
                     (getattr(n, "module", None) or a.name).split(".")[0] == "mlflow"
                     for a in n.names) for n in ast.walk(ast.parse(path.read_text())))]
    assert offenders == []


def test_the_hydra_plugins_import_nothing_of_the_app():
    g = graph()
    plugins = [m for m in g if m.startswith("hydra_plugins.")]
    assert "hydra_plugins.lambda_star_sweeper.lambda_star_sweeper" in plugins
    assert {m: [i for i in g[m] if i.startswith("app")] for m in plugins} == {
        m: [] for m in plugins}


def test_private_library_apis_are_used_only_in_compat():
    for name, path in modules().items():
        if name == "app.compat":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            attr = getattr(node, "attr", None) or getattr(node, "module", None) or ""
            assert attr.rsplit(".", 1)[-1] not in PRIVATE, f"{name} uses {attr}"


BOUNDARY = {"app.pipeline", "app.sweep", "app.config", "app.cli"}  # where the run config lives
MODEL_SET = "app.modelset"


def whole_config_uses(tree: ast.AST) -> list[str]:
    """Where code holds the whole run config: a parameter or name ``cfg`` (the run config's
    name everywhere; a component's own settings are ``task_cfg``, ``probe_cfg``, …)."""
    return [f"line {n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.arg) and n.arg == "cfg"
            or isinstance(n, ast.Name) and n.id == "cfg"]


def pool_tests(tree: ast.AST) -> list[str]:
    """Where code reads ``model.experts`` (whether a model config is a pool, or its experts)."""
    return [f"line {n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "experts"
            and (isinstance(n.value, ast.Attribute) and n.value.attr == "model"
                 or isinstance(n.value, ast.Name) and n.value.id == "model")]


def test_only_the_boundary_takes_the_whole_config():
    offenders = {name: found for name, path in modules().items()
                 if name.startswith("app.") and name not in BOUNDARY
                 and (found := whole_config_uses(ast.parse(path.read_text())))}
    assert offenders == {}


def test_only_the_model_set_asks_whether_a_model_is_a_pool():
    offenders = {name: found for name, path in modules().items()
                 if name != MODEL_SET and (found := pool_tests(ast.parse(path.read_text())))}
    assert offenders == {}


def test_the_walks_see_what_they_forbid():
    code = ast.parse("def f(cfg):\n    if cfg.model.experts:\n        return cfg['lambda']\n"
                     "def g(model):\n    return model.experts\n")
    assert len(whole_config_uses(code)) == 3 and len(pool_tests(code)) == 2
    assert whole_config_uses(ast.parse("def f(task_cfg):\n    return task_cfg.limit\n")) == []
