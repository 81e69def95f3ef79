"""The ssh wrapper's remote side is the shipped module zmqexecutor/_ssh_remote.py, sent as is.

No sshd needed: tests/test_ssh.py runs the wrapper over a real ssh session.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import zmqexecutor
from zmqexecutor import _ssh_remote  # importing it must not run it (it would os._exit)
from zmqexecutor.ssh import remote_command


def test_remote_command_sends_the_shipped_module_which_compiles() -> None:
    path = Path(_ssh_remote.__file__)
    assert path.parent == Path(zmqexecutor.__file__).parent  # a file of the package
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec")

    argv = shlex.split(remote_command("tcp://head:5555", processes=2))
    assert argv[1] == "-c"
    assert argv[2] == source  # the file, byte for byte: nothing added or stripped
    assert argv[3:] == [_ssh_remote.TOKEN_FROM_STDIN, "tcp://head:5555", "--processes", "2"]


def test_remote_module_parses_on_old_pythons() -> None:
    """A host whose python3 is too old for zmqexecutor must get the wrapper's "cannot import
    zmqexecutor" message, not a SyntaxError: the module promises to parse on Python 3.6."""
    source = Path(_ssh_remote.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 6))
    # ast's feature_version does not check __future__ imports; `annotations` needs 3.7.
    future = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        for alias in node.names
    }
    assert "annotations" not in future
