"""``durable-build app.py -o app.wasm``: build a workflow component.

Wraps componentize-py with the WIT contract shipped inside this package and
the world ``workflow``, so an author only names their module (``--http``
adds ``wasi:http``, with the WIT of the durable-host found; see
:func:`host_wit`). The author's
module is imported at build time (componentize-py snapshots the initialised
interpreter), which is also what makes the branch functions it registers
visible to the fresh instances the host runs branches in.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

WORLD = "workflow"
HTTP_WORLD = "workflow-http"
ENTRY = "durable_component_entry"
# Top-level names the build uses itself: an app module cannot take them.
RESERVED = {
    ENTRY,
    "durable",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
    WORLD,
}

ENTRY_SOURCE = """\
# Written by durable-build: imports the workflow module, then exports the SDK's glue.
import importlib

import durable._sdk as _sdk

importlib.import_module({module!r})
if _sdk._WORKFLOW is None:
    raise RuntimeError(
        "durable-build: module {module} defines no workflow: decorate its "
        "workflow function with @durable.workflow"
    )

from durable._world import WitWorld  # noqa: E402,F401
"""


class BuildError(Exception):
    """A build failure: one line saying what went wrong, one saying what to do."""

    def __init__(self, cause: str, hint: str, details: str = ""):
        super().__init__(cause)
        self.cause = cause
        self.hint = hint
        self.details = details


def wit_dir() -> Path:
    """The WIT contract shipped with the package."""
    path = Path(__file__).resolve().parent / "wit"
    if not (path / "durable.wit").is_file():
        raise BuildError(
            f"the WIT contract is missing from the durable package ({path})",
            "reinstall the SDK: pip install --force-reinstall durable-sdk",
        )
    return path


def host_wit(host: str | None, into: Path) -> str:
    """Write a WIT directory for an HTTP build into ``into``: this SDK's
    contract, and WASI's packages as the durable-host that will run the
    component links them (``durable-host wit``), so the build matches the
    host's ``wasi:http``, and a world ``workflow-http``: ``workflow`` plus
    ``wasi:http/outgoing-handler``. Returns that world's name. (One world:
    componentize-py 0.25 fails on ``-w workflow -w wasi:http/imports``.)"""
    exe = host or os.environ.get("DURABLE_HOST") or shutil.which("durable-host")
    if not exe:
        raise BuildError(
            "--http builds against the wasi:http of the durable-host that runs the workflow, "
            "and no durable-host was found",
            "put durable-host on PATH, or pass --host PATH (or set DURABLE_HOST)",
        )
    try:
        result = subprocess.run(
            [exe, "--json", "wit", str(into)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
    except OSError as e:
        raise BuildError(
            f"cannot run {exe}: {e.strerror}", "pass --host PATH of durable-host"
        ) from None
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        hint = (
            "use a durable-host that has the `wit` command (0.3.0 or later)"
            if "unrecognized subcommand" in result.stderr
            else "see the error above"
        )
        raise BuildError(f"`{exe} wit` failed: {lines[0]}", hint)
    wasi = json.loads(result.stdout)["wasi"]
    # The host may know a newer contract than this SDK was written for.
    contract = wit_dir() / "durable.wit"
    shutil.copyfile(contract, into / "durable.wit")
    package = next(
        line.strip() for line in contract.read_text().splitlines() if line.startswith("package ")
    )
    (into / "workflow-http.wit").write_text(
        f"{package}\n\nworld {HTTP_WORLD} {{\n    include {WORLD};\n"
        f"    import wasi:http/outgoing-handler@{wasi};\n}}\n"
    )
    return HTTP_WORLD


def locate(app: str, python_path: Sequence[str]) -> tuple[str, list[Path]]:
    """The module name of ``app`` (a ``.py`` file, a package directory or a
    module name) and the directories componentize-py must search."""
    path = Path(app)
    search = [Path(p).resolve() for p in python_path]
    if app.endswith(".py"):
        if not path.is_file():
            raise BuildError(f"{app}: no such file", "give the path of the workflow's .py file")
        module, directory = path.stem, path.resolve().parent
    elif path.is_dir():
        if not (path / "__init__.py").is_file():
            raise BuildError(
                f"{app} is a directory without __init__.py",
                "give the workflow's .py file, or a package directory",
            )
        module, directory = path.resolve().name, path.resolve().parent
    else:
        module, directory = app, Path.cwd()
        top = module.split(".")[0]
        candidates = [
            d for d in [directory, *search] if (d / f"{top}.py").is_file() or (d / top).is_dir()
        ]
        if not candidates:
            raise BuildError(
                f"cannot find the module {app!r} in {directory} or the --python-path directories",
                "give the path of the workflow's .py file: durable-build app.py -o app.wasm",
            )
    for part in module.split("."):
        if not part.isidentifier() or keyword.iskeyword(part):
            raise BuildError(
                f"{module!r} is not a valid Python module name",
                "rename the file to a Python identifier (letters, digits, _), e.g. my_workflow.py",
            )
    if module.split(".")[0] in RESERVED:
        raise BuildError(
            f"the module name {module!r} is taken by the build itself",
            "rename the workflow file (e.g. app.py)",
        )
    return module, [directory, *search]


def componentize_command() -> list[str]:
    """componentize-py, run by this interpreter (no PATH lookup needed)."""
    try:
        import componentize_py  # noqa: F401
    except ImportError:
        raise BuildError(
            "componentize-py is not installed in this Python environment",
            "install the SDK with its dependencies: pip install durable-sdk "
            "(it brings componentize-py==0.25.0)",
        ) from None
    return [
        sys.executable,
        "-c",
        "import sys, componentize_py; sys.argv[0] = 'componentize-py'; "
        "sys.exit(componentize_py.script())",
    ]


def _cause(output: str) -> str:
    """The most telling line of componentize-py's output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*", line) or line.startswith(
            "RuntimeError"
        ):
            return line
    for line in reversed(lines):
        if line.lower().startswith(("error", "caused by")):
            return line
    return lines[-1] if lines else "componentize-py failed without output"


def _details(output: str) -> str:
    """componentize-py's output cut down to the author's traceback: the
    wrapper around it, and the frames of the build's entry module and of
    importlib, are noise."""
    text = output
    marker = "AssertionError: Traceback (most recent call last):"
    if marker in text:
        text = "Traceback (most recent call last):" + text.split(marker, 1)[1]
    text = text.split("\n\nCaused by:", 1)[0]
    kept, skip = [], False
    for line in text.splitlines():
        if line.startswith("  File "):
            skip = ENTRY in line or "/importlib/" in line
        elif not line.startswith("    "):
            skip = False
        if not skip:
            kept.append(line)
    return "\n".join(kept).strip()


def build(
    app: str,
    output: str | None = None,
    python_path: Sequence[str] = (),
    http: bool = False,
    host: str | None = None,
) -> Path:
    """Build ``app`` into a component; returns its path. Raises :class:`BuildError`.

    With ``http`` the component may import ``wasi:http`` (``durable.http``),
    built against the WIT of the durable-host ``host`` (else $DURABLE_HOST,
    else the one on PATH)."""
    module, search = locate(app, python_path)
    out = Path(output) if output else Path(f"{module.split('.')[-1]}.wasm")
    if out.parent and not out.parent.is_dir():
        raise BuildError(
            f"the output directory {out.parent} does not exist", "create it, or choose another -o"
        )
    sdk_root = Path(__file__).resolve().parent.parent
    command = componentize_command()
    with tempfile.TemporaryDirectory(prefix="durable-build-") as entry_dir:
        Path(entry_dir, f"{ENTRY}.py").write_text(ENTRY_SOURCE.format(module=module))
        if http:
            wit = Path(entry_dir, "wit")
            command += ["-d", str(wit), "-w", host_wit(host, wit)]
        else:
            command += ["-d", str(wit_dir()), "-w", WORLD]
        command += ["componentize", ENTRY]
        command += ["-p", entry_dir]
        for directory in [*search, sdk_root]:
            command += ["-p", str(directory)]
        command += ["-o", str(out)]
        env = dict(os.environ, RUST_BACKTRACE="0")
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env
        )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        cause = _cause(output)
        details = _details(output)
        if len(details.splitlines()) <= 2:
            details = ""  # the cause says it all
        if "No module named" in cause:
            hint = "install the module into this environment, or add its directory with -p"
        elif "durable-build --http" in cause:
            hint = "build with --http (the workflow imports durable.http)"
        elif "defines no workflow" in cause:
            hint = "add @durable.workflow to the workflow function (def name(ctx, input))"
        elif "SyntaxError" in cause or "IndentationError" in cause:
            hint = "fix the syntax error above"
        else:
            hint = "the traceback above is from importing the workflow module at build time"
        raise BuildError(f"building {app} failed: {cause}", hint, details)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="durable-build",
        description="Build a Python workflow into a durable-host component (WebAssembly).",
    )
    parser.add_argument(
        "app", help="the workflow's .py file (or a package directory, or a module name)"
    )
    parser.add_argument("-o", "--output", help="the component to write (default: <module>.wasm)")
    parser.add_argument(
        "-p",
        "--python-path",
        action="append",
        default=[],
        help="another directory to import modules from (repeatable)",
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="allow outbound HTTP from steps (durable.http); needs durable-host for its WIT",
    )
    parser.add_argument(
        "--host",
        metavar="PATH",
        help="the durable-host whose wasi:http --http builds against "
        "(default: $DURABLE_HOST, else durable-host on PATH)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        out = build(args.app, args.output, args.python_path, args.http, args.host)
    except BuildError as e:
        if e.details:
            print(e.details, file=sys.stderr)
        print(f"error: {e.cause}", file=sys.stderr)
        print(f"  hint: {e.hint}", file=sys.stderr)
        return 1
    if not args.quiet:
        size = os.path.getsize(out) / 1e6
        print(f"built {out} ({size:.1f} MB) in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
