"""The layout DESIGN.md draws, checked: imports point one way, the entry points stay short, every
Markdown table renders. These are properties of the source tree, read with `ast` and as text."""
import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train", "sample", "bench", "explore"}
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))


def project_imports(name):
    """The project modules that module `name` imports, anywhere in its body."""
    tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES) - {name}


GRAPH = {m: project_imports(m) for m in MODULES}


@pytest.mark.parametrize("name", MODULES)
def test_no_module_imports_a_script_and_scripts_do_not_import_each_other(name):
    assert not GRAPH[name] & SCRIPTS, f"{name}.py imports {sorted(GRAPH[name] & SCRIPTS)}"


def test_imports_have_no_cycle():
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in GRAPH[m]:
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])


def test_the_bottom_of_the_graph_imports_nothing_above_it():
    assert GRAPH["metrics"] == set() and GRAPH["diffusion"] == set() and GRAPH["nn"] == set()
    models = {"unet", "encoder", "diffae", "pdae", "latent_ddim", "checkpoint", "official", "official_pdae"}
    assert not GRAPH["metrics"] & models and not GRAPH["classifier"] & models


def function_lengths(name):
    tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
    return {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", sorted(SCRIPTS & set(MODULES)))
def test_entry_point_functions_fit_on_a_screen(name):
    long = {f: n for f, n in function_lengths(name).items() if n > 60}
    assert not long, f"{name}.py: functions over 60 lines: {long}"


def test_train_py_reads_in_one_sitting():
    assert sum(1 for _ in open(os.path.join(ROOT, "train.py"))) <= 500


def markdown_tables(text):
    """Each table as its list of rows (a row: the cells between pipes), outside fenced code."""
    tables, current, fenced = [], [], False
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.strip().startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


DOCS = sorted(glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.md")))


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_every_markdown_table_renders(path):
    """GitHub renders a table only when its second row is a separator with as many cells as the header."""
    text = open(path).read().replace("\\|", "")  # an escaped pipe is a character, not a cell border
    for table in markdown_tables(text):
        where = f"{os.path.relpath(path, ROOT)}: table '{' | '.join(table[0])[:60]}'"
        assert len(table) >= 2 and all(re.fullmatch(r":?-{3,}:?", c) for c in table[1]), f"{where}: no separator row"
        assert len(table[1]) == len(table[0]), f"{where}: {len(table[0])} header cells, {len(table[1])} in the separator"


def test_the_readme_is_a_front_door():
    assert sum(1 for _ in open(os.path.join(ROOT, "README.md"))) <= 250
