"""``--handler``: find a handler by name, once, in the parent, before any fork.

Three forms:

- a built-in service: ``echo``, ``discard``, ``daytime``, ``chargen``;
- ``package.module:function`` (``function`` may be dotted: ``module:obj.method``),
  imported with the current directory first on ``sys.path``, as ``python -m`` does,
  so ``--handler examples.kv:handle`` works from the repository root;
- ``path/to/file.py:function``, loaded from that file, with the file's directory
  first on ``sys.path`` (as ``python path/to/file.py`` does), so its own imports of
  sibling modules work.

``function`` may also name a ``socketserver.BaseRequestHandler`` subclass
(``http.server:SimpleHTTPRequestHandler``): it is run as socketserver runs it (see
``child.requesthandler``). Loading is a function of the name alone: the same name
loads the same handler in any process.

Every failure is a ``HandlerError`` (exit 100) with a one-line message; an exception
raised while the module was imported is its ``__cause__`` (the CLI shows the
traceback at ``-v``).
"""

from __future__ import annotations

import importlib
import os
import sys

from forkserve._errors import HandlerError
from forkserve.child.builtins import BUILTINS
from forkserve.child.handler import Handler
from forkserve.child.requesthandler import handler_for

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from types import ModuleType

FORMS = "MODULE:FUNCTION, FILE.py:FUNCTION or a built-in: " + ", ".join(BUILTINS)


def load_handler(spec: str) -> Handler:
    """Return the handler ``spec`` names.

    Raises:
        HandlerError: the name is malformed, does not import, or names something
            missing or not callable.
    """
    if ":" not in spec:
        if spec in BUILTINS:
            return BUILTINS[spec]
        raise HandlerError(f"unknown handler {spec!r}: expected {FORMS}")
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise HandlerError(f"invalid handler {spec!r}: expected {FORMS}")
    is_file = where.endswith(".py") or "/" in where
    module = import_file(where) if is_file else import_module(where)
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerError(f"handler {spec!r}: {where!r} has no {attribute!r}") from None
    if not callable(obj):
        kind = type(obj).__name__
        raise HandlerError(f"handler {spec!r} is not callable (it is a {kind})")
    return handler_for(obj, spec)  # a socketserver handler class: decided here, once


def import_module(name: str) -> ModuleType:
    """Import ``name`` with the current directory first on ``sys.path``."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise HandlerError(f"cannot import handler module {name!r}: not found") from None
        raise import_failed(name, exc) from exc
    except (Exception, SystemExit) as exc:  # any error in user code: one line, exit 100
        raise import_failed(name, exc) from exc


def import_file(path: str) -> ModuleType:
    """Load the module in file ``path`` under its file name's stem."""
    if not os.path.isfile(path):
        raise HandlerError(f"cannot load handler file {path!r}: no such file")
    import importlib.util

    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot load handler file {path!r}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules.setdefault(name, module)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # any error in user code: one line, exit 100
        if sys.modules.get(name) is module:
            del sys.modules[name]
        raise import_failed(path, exc) from exc
    return module


def import_failed(name: str, exc: BaseException) -> HandlerError:
    """The one-line error for a module that raised while it was imported."""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return HandlerError(f"importing handler module {name!r} failed: {what}")
