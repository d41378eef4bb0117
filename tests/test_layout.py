"""The shape of the library and the benchmark: no import cycles (imports inside functions
counted), small files, and the library reaching the benchmark only through its command."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "fpt_core", ROOT / "fpt_bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules among `modules` that `path` imports anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for package in PACKAGES for p in package.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_library_and_the_benchmark_have_no_import_cycle():
    # A package's __init__ importing its own submodules is how a package is made, not a cycle.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph().items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_no_library_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for package in PACKAGES for p in package.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_the_library_reaches_the_benchmark_only_through_fpt_bench_command():
    edges = graph()
    assert "fpt_bench.bench" in edges["fpt_core.cli"]  # the graph sees the command's import
    into_bench = {m for m, deps in edges.items() if m.startswith("fpt_core")
                  and any(d.startswith("fpt_bench") for d in deps)}
    assert into_bench == {"fpt_core.cli"}
