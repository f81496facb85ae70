"""The shape of the package, checked with ``ast``: no import cycles, packages by role.

Imports inside functions count (they run when the function does); imports under
``if TYPE_CHECKING:`` do not (they never run). See tests/unit/importgraph.py.
"""

from __future__ import annotations

from tests.unit.importgraph import SRC, graph, modules, strongly_connected

# Cycles allowed for now, each with who removes it; empty today. The list only
# shrinks: a listed cycle that no longer exists fails the test too, so whoever
# breaks one deletes its line.
# (config.reload <-> _server went when config.reload took the pool's setting names
# from core.names instead of _server.)
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# Cycles through imports for the type checker only: harmless at run time, but a sign
# that two modules are one. The same rule: the list only shrinks.
KNOWN_TYPE_ONLY_CYCLES: dict[frozenset[str], str] = {
    # Type-only: the loop, its process models and operations, and the reload plan
    # name each other's types (the loop holds them; they are handed the loop).
    # Nothing of it runs at import: allowed by the rule, kept here to be seen.
    # (prefork.forked and prefork.spawner joined with prefork workers forked by the
    # forker: the pool's forker is parent.forker's Forkers, which names the loop.)
    frozenset(
        {
            "forkserve._server",
            "forkserve.asyncmode.pool",
            "forkserve.config.reload",
            "forkserve.parent.admission",
            "forkserve.parent.assemble",
            "forkserve.parent.forker",
            "forkserve.parent.forkerlink",
            "forkserve.parent.forkmodel",
            "forkserve.parent.loop",
            "forkserve.parent.model",
            "forkserve.parent.operations",
            "forkserve.parent.upgrade",
            "forkserve.prefork.forked",
            "forkserve.prefork.pool",
            "forkserve.prefork.spawner",
            "forkserve.prefork.workers",
        }
    ): "compose",
}

# What each package may import from the project (besides itself). The pure core
# imports only the core and the errors; a connection's process never imports the
# parent's or the pool's code.
ALLOWED = {
    "core": {"core", "_errors"},
    "child": {"core", "child", "_errors", "_log"},
}


def role(module: str) -> str:
    """``forkserve.child.exec`` -> ``child``; ``forkserve._log`` -> ``_log``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def describe(cycle: frozenset[str], edges: dict[str, set[str]]) -> str:
    return "; ".join(f"{name} -> {sorted(edges[name] & cycle)}" for name in sorted(cycle))


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = strongly_connected(edges)
    unknown = [describe(cycle, edges) for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not unknown, "import cycles:\n" + "\n".join(unknown)


def test_known_cycles_still_exist() -> None:
    """The allow-list stays honest: remove a cycle, remove its line."""
    cycles = set(strongly_connected(graph()))
    gone = [sorted(cycle) for cycle in KNOWN_CYCLES if cycle not in cycles]
    assert not gone, "no longer a cycle, take it off KNOWN_CYCLES: " + repr(gone)


def test_packages_import_by_role() -> None:
    edges = graph()
    wrong: list[str] = []
    for module, imported in sorted(edges.items()):
        allowed = ALLOWED.get(role(module))
        if allowed is None:
            continue
        crossing = sorted(other for other in imported if role(other) not in allowed)
        wrong.extend(f"{module} -> {other}" for other in crossing)
    assert not wrong, "imports across roles:\n" + "\n".join(wrong)


def test_graph_sees_function_imports_and_skips_type_checking() -> None:
    """The checker itself: a cycle through an import inside a function is found, one
    under ``if TYPE_CHECKING:`` is not."""
    edges = graph()
    # cli.main imports the client inside build_parser(); child.edge imports
    # child.handler only for types.
    assert "forkserve.cli.client" in edges["forkserve.cli.main"]
    assert "forkserve.child.handler" not in edges["forkserve.child.edge"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        frozenset({"a", "b", "c"})
    ]


def test_errnos_are_named_in_one_place() -> None:
    """Every log line names an errno through core.errnames.errno_name."""
    spelled = [
        name
        for name, path in modules().items()
        if "errorcode" in path.read_text() and name != "forkserve.core.errnames"
    ]
    assert spelled == []


def test_architecture_doc_names_real_files_and_every_module() -> None:
    """docs/architecture.md: every file it names exists, and every module has a row."""
    import re

    root = SRC.parent.parent
    doc = (root / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", doc))
    missing = sorted(p for p in named if not (SRC / p).exists() and not (root / p).exists())
    assert missing == []
    listed = {str(path.relative_to(SRC)) for path in SRC.rglob("*.py")}
    packages = {path for path in listed if path.endswith("__init__.py") and "/" in path}
    bench = {path for path in listed if path.startswith("cli/bench/")}
    unlisted = sorted(listed - named - packages - bench)
    assert unlisted == []


def test_type_only_cycles_are_the_known_ones() -> None:
    edges = graph(type_checking=True)
    cycles = set(strongly_connected(edges)) - set(strongly_connected(graph()))
    assert {cycle: describe(cycle, edges) for cycle in cycles} == {
        cycle: describe(cycle, edges) for cycle in KNOWN_TYPE_ONLY_CYCLES
    }
