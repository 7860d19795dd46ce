"""The house rules of deephash_jax, checked on its source: data flows one way (no import cycle,
deferred imports counted), modules and functions stay readable, every module has its tests, and
every dependency the code imports is declared (and nothing declared goes unused)."""
import ast
import configparser
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "deephash_jax")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 700, 80
# Import name -> distribution, for everything imported outside the standard library.
DISTRIBUTIONS = {
    "PIL": "pillow", "absl": "absl-py", "clu": "clu", "etils": "etils", "faiss": "faiss-cpu",
    "fastapi": "fastapi", "flax": "flax", "jax": "jax", "matplotlib": "matplotlib",
    "ml_collections": "ml-collections", "numpy": "numpy", "optax": "optax",
    "orbax": "orbax-checkpoint", "psutil": "psutil", "pytest": "pytest", "scipy": "scipy",
    "selenium": "selenium", "starlette": "starlette", "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets", "uvicorn": "uvicorn",
}
# Declared, never imported by our code, and why they are needed.
NEEDED_UNIMPORTED = {
    "tensorboard": "CLU's TensorBoard writer",
    "importlib_resources": "tensorflow-datasets imports it without declaring it",
    "python-multipart": "FastAPI parses uploads with it",
    "httpx": "FastAPI's TestClient",
    "pytest-xdist": "make test's 2 workers (pytest -n 2)",
}


def _modules():
  """{dotted module name: path} of every module of the package (a package = its __init__)."""
  out = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


def _imports(path):
  """(module, node) of every import in a file, at any depth (deferred ones included)."""
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module, node
      for alias in node.names:
        yield f"{node.module}.{alias.name}", node


def test_no_import_cycle_counting_deferred_imports_and_parent_packages():
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = set()
    for imported, _ in _imports(path):
      parts = imported.split(".")
      # Importing a.b.c runs a, a.b and a.b.c: each is a dependency.
      deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules)
    graph[name] = deps - {name}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"
  for name in sorted(graph):
    if name not in state:
      visit(name, [])
  assert not cycles, cycles


def test_modules_and_functions_stay_readable():
  too_long = []
  for name, path in _modules().items():
    source = open(path).read()
    if source.count("\n") > MAX_MODULE_LINES:
      too_long.append(f"{name}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
          too_long.append(f"{name}.{node.name}: {length} lines")
  assert not too_long, too_long


def test_every_module_has_its_test_file():
  missing = []
  for name, path in _modules().items():
    if path.endswith("__init__.py"):
      continue
    relative = os.path.relpath(path, PACKAGE)
    test = os.path.join(REPO, "tests", os.path.dirname(relative),
                        f"test_{os.path.basename(relative)}")
    if not os.path.exists(test):
      missing.append(os.path.relpath(test, REPO))
  assert not missing, missing


def _declared():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  lines = parser["options"]["install_requires"].splitlines()
  for extra in parser["options.extras_require"].values():
    lines += extra.splitlines()
  names = set()
  for line in lines:
    line = line.split("#")[0].strip()
    if line:
      names.add(re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower())
  return names


def test_every_imported_dependency_is_declared_and_every_declared_one_is_used():
  imported = set()
  for root in ("deephash_jax", "tests", "benchmarks", "configs"):
    for directory, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith(".py"):
          imported |= {module.split(".")[0]
                       for module, _ in _imports(os.path.join(directory, name))}
  imported -= set(sys.stdlib_module_names) | {"deephash_jax", "tests", "__future__"}
  unknown = imported - set(DISTRIBUTIONS)
  assert not unknown, f"add these to DISTRIBUTIONS and setup.cfg: {sorted(unknown)}"
  needed = {DISTRIBUTIONS[name] for name in imported}
  declared = _declared()
  assert needed <= declared, f"imported, not declared: {sorted(needed - declared)}"
  unused = declared - needed - set(NEEDED_UNIMPORTED)
  assert not unused, f"declared, never imported: {sorted(unused)}"


def test_deferred_imports_are_the_few_that_need_to_be():
  """A deferred import may only import a third-party module that is slow or optional (TF, the
  demo's extras, faiss), or be a command's import in main.py (each command loads its own)."""
  allowed_modules = {"tensorflow", "tensorflow_datasets", "jax", "faiss", "selenium"}
  offenders = []
  for name, path in _modules().items():
    tree = ast.parse(open(path).read())
    for function in ast.walk(tree):
      if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(function):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
          if name == "deephash_jax.main" or module.split(".")[0] in allowed_modules:
            continue
          offenders.append(f"{name}:{node.lineno} {module}")
  assert not offenders, offenders
