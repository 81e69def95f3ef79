"""The deploy examples in examples/deploy/: what can be checked on this machine.

- SLURM: zmqexecutor.sbatch runs end to end under a fake SLURM -- ``fake_sbatch`` below reads
  the ``#SBATCH`` lines like sbatch does and runs the script with the SLURM_* variables of a
  3-node allocation, and a shim ``srun`` on PATH starts the command once per "node", locally,
  with that node's SLURM_* variables, and forwards SIGTERM as srun does. The executor and the
  workers talk over loopback with a token, and the job's output must show its result.
- Docker Compose and Kubernetes: no container engine or cluster here, so the files are
  parsed and cross-checked: the worker command is accepted by the real worker CLI parser,
  it connects to the executor's service name and port, the token comes from the right
  secret, the Dockerfile copies files that exist. YAML is read with PyYAML when it is
  installed, else with the small block-YAML reader below (the subset the examples use).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import free_tcp_port

from zmqexecutor._defaults import ENV_TOKEN
from zmqexecutor.cli import worker_parser

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
SLURM = DEPLOY / "slurm"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
SBATCH_TIMEOUT = 150.0
NODES = 3


# ---------------------------------------------------------------------------- fake SLURM

SRUN_SHIM = """\
#!{python}
# A fake srun: run the command once per node of the allocation, here, with that node's
# SLURM_* variables; forward SIGTERM/SIGINT to every task like srun; exit with the worst status.
import json, os, signal, subprocess, sys

tasks = []
stopping = []

def forward(signum, frame):
    stopping.append(signum)
    for t in tasks:
        if t.poll() is None:
            t.send_signal(signum)

signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
args = sys.argv[1:]
options = []
while args and args[0].startswith("-"):
    options.append(args.pop(0))
if not args:
    sys.exit("srun (fake): no command")
nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
for opt in options:
    if opt.startswith("--nodes="):
        nodes = int(opt.split("=", 1)[1])
    elif "=" not in opt and opt not in ("--overlap", "--exclusive"):
        sys.exit("srun (fake): write options as --name=value, got " + opt)
for i in range(nodes):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_NODEID=str(i), SLURM_LOCALID="0",
               SLURM_NTASKS=str(nodes), SLURM_STEP_ID="0", SLURMD_NODENAME="node%d" % i)
    tasks.append(subprocess.Popen(args, env=env))
codes = [t.wait() for t in tasks]
with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
    log.write(json.dumps({{"options": options, "command": args, "codes": codes,
                          "signals": stopping}}) + "\\n")
sys.exit(max((c if c >= 0 else 128 - c) for c in codes))
"""


def sbatch_directives(script: Path) -> dict[str, str]:
    """The ``#SBATCH --name=value`` lines, read like sbatch: up to the first command."""
    options: dict[str, str] = {}
    for line in script.read_text().splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            m = re.fullmatch(r"#SBATCH\s+--([a-z-]+)=(\S+)", stripped)
            assert m, f"unexpected #SBATCH line (use --name=value): {line!r}"
            options[m.group(1)] = m.group(2)
    return options


def fake_sbatch(
    script: Path, submit_dir: Path, env: dict[str, str], **overrides: str
) -> tuple[int, Path]:
    """Run ``script`` as sbatch would on the first node of the allocation it asks for
    (``overrides`` play the part of sbatch's command-line options); return the exit status
    and the job's output file."""
    options = {**sbatch_directives(script), **overrides}
    job_id = "4242"
    nodes = int(options["nodes"])
    job_env = {
        **env,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_JOB_NAME": options["job-name"],
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": f"node[0-{nodes - 1}]",
        "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"],
        "SLURM_CPUS_PER_TASK": options["cpus-per-task"],
        "SLURM_SUBMIT_DIR": str(submit_dir),
        "SLURMD_NODENAME": "node0",
    }
    output = submit_dir / options["output"].replace("%j", job_id)
    with open(output, "wb") as out:
        proc = subprocess.run(
            ["bash", str(script)],
            cwd=submit_dir,
            env=job_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=SBATCH_TIMEOUT,
        )
    return proc.returncode, output


@pytest.mark.timeout(SBATCH_TIMEOUT + 30)
def test_sbatch_script_runs_the_job_on_every_node(tmp_path: Path) -> None:
    # The user's side: the two files in a directory they submit from, a fresh $HOME.
    submit = tmp_path / "submit"
    submit.mkdir()
    for name in ("zmqexecutor.sbatch", "run_job.py"):
        shutil.copy(SLURM / name, submit / name)
    home = tmp_path / "home"
    home.mkdir()
    shims = tmp_path / "bin"
    shims.mkdir()
    srun = shims / "srun"
    srun.write_text(SRUN_SHIM.format(python=sys.executable))
    srun.chmod(0o755)
    srun_log = tmp_path / "srun.log"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZMQEXECUTOR_TOKEN", "SLURM"))}
    env.update(
        HOME=str(home),
        # the shim first; then this venv, as if the user had activated it (python3 and
        # zmqexecutor-worker come from there)
        PATH=os.pathsep.join([str(shims), str(Path(sys.executable).parent), env["PATH"]]),
        FAKE_SRUN_LOG=str(srun_log),
        ZMQEXECUTOR_PORT=str(free_tcp_port()),
        PYTHONUNBUFFERED="1",
    )
    try:
        socket.gethostbyname(socket.gethostname())
    except OSError:  # the script's default, $(hostname), must resolve: not so in every sandbox
        env["ZMQEXECUTOR_HEAD"] = "127.0.0.1"

    code, output = fake_sbatch(
        submit / "zmqexecutor.sbatch", submit, env, nodes=str(NODES), **{"cpus-per-task": "1"}
    )
    text = output.read_text(errors="replace")
    assert code == 0, text
    assert output.name == "zmqexecutor-4242.out"
    # The job's result, computed by workers on every node.
    joined = ", ".join(f"node{i}" for i in range(NODES))
    assert f"all {NODES} worker hosts joined: {joined}" in text, text
    assert f"sum of squares below 100,000: {sum(x * x for x in range(100_000))}" in text, text
    assert "the job exited with status 0" in text, text
    # The token: created in $HOME, private.
    token_file = home / ".zmqexecutor" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = token_file.read_text().strip()
    assert token not in text
    # srun ran the worker CLI once per node, with the token file (never the token), and
    # every worker host exited 0 on the SIGTERM the script sent when the job was done.
    (step,) = [json.loads(line) for line in srun_log.read_text().splitlines()]
    assert step["command"][0] == "zmqexecutor-worker"
    worker = worker_parser().parse_args(step["command"][1:])
    assert (
        worker.executor
        == f"tcp://{env.get('ZMQEXECUTOR_HEAD', socket.gethostname())}:" + env["ZMQEXECUTOR_PORT"]
    )
    assert worker.token_file == str(token_file)
    assert worker.token is None and token not in json.dumps(step)
    assert worker.processes == 1
    assert f"--nodes={NODES}" in step["options"] and "--cpus-per-task=1" in step["options"]
    assert step["codes"] == [0] * NODES
    assert step["signals"] == [15]


def test_sbatch_script_is_well_formed() -> None:
    script = SLURM / "zmqexecutor.sbatch"
    assert script.read_text().startswith("#!/bin/bash\n")
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    options = sbatch_directives(script)
    assert {"job-name", "nodes", "ntasks-per-node", "cpus-per-task", "time", "output"} <= set(
        options
    )
    assert options["ntasks-per-node"] == "1"  # one worker host per node
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True, timeout=60)


def test_run_job_help() -> None:
    proc = subprocess.run(
        [sys.executable, str(SLURM / "run_job.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--listen" in proc.stdout and "--hosts" in proc.stdout


# ---------------------------------------------------------------------------- YAML


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        assert text.endswith("'") and len(text) > 1, text
        return text[1:-1].replace("''", "'")
    if text[:1] in "[{|>&*!%@`":
        raise ValueError(f"unsupported YAML (flow, block scalar, anchor or tag): {text!r}")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    return text


_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s'"#][^:#]*?):(?:\s+(.*))?$""")


def mini_yaml_load_all(text: str) -> list[Any]:
    """Read block-style YAML: mappings, sequences, quoted and plain scalars, comments, ``---``.

    Raises ValueError on anything else (tabs, flow collections, block scalars, anchors), so
    a later edit of an example that needs more is flagged, not misread.
    """
    docs: list[list[tuple[int, str]]] = [[]]
    for raw in text.splitlines():
        if raw.startswith("---"):
            docs.append([])
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"tab in indentation: {raw!r}")
        line = _strip_comment(raw)
        if line.strip():
            docs[-1].append((len(line) - len(line.lstrip()), line.strip()))

    def node(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            return sequence(lines, i, indent)
        return mapping(lines, i, indent)

    def sequence(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            rest = lines[i][1][1:].lstrip()
            if not rest:
                value, i = node(lines, i + 1, lines[i + 1][0])
            elif _KEY.match(rest):
                # "- key: value" opens a mapping whose keys line up with "key"
                lines[i] = (indent + len(lines[i][1]) - len(rest), rest)
                value, i = mapping(lines, i, lines[i][0])
            else:
                value, i = _scalar(rest), i + 1
            out.append(value)
        return out, i

    def mapping(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            m = _KEY.match(lines[i][1])
            if not m:
                raise ValueError(f"not a 'key: value' line: {lines[i][1]!r}")
            key = _scalar(m.group(1))
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            if m.group(2) is not None and m.group(2) != "":
                out[key], i = _scalar(m.group(2)), i + 1
            elif i + 1 < len(lines) and (
                lines[i + 1][0] > indent
                or (lines[i + 1][0] == indent and lines[i + 1][1].startswith("- "))
            ):
                out[key], i = node(lines, i + 1, lines[i + 1][0])
            else:
                out[key], i = None, i + 1
        if i < len(lines) and lines[i][0] > indent:
            raise ValueError(f"bad indentation at {lines[i][1]!r}")
        return out, i

    results = []
    for lines in docs:
        if not lines:
            continue
        value, end = node(lines, 0, lines[0][0])
        if end != len(lines):
            raise ValueError(f"bad indentation at {lines[end][1]!r}")
        results.append(value)
    return results


def load_yaml(path: Path) -> list[Any]:
    text = path.read_text()
    mine = mini_yaml_load_all(text)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return mine
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs == mine, "the small YAML reader disagrees with PyYAML"
    return docs


def test_mini_yaml_reader() -> None:
    text = """\
# comment
a: 1
b: "two: 2"   # trailing comment
c:
  - x
  - 'it''s'
  - k: v
    n:
      - 3
d:
- e: null
  f: true
---
g: tcp://host:5555
"""
    assert mini_yaml_load_all(text) == [
        {
            "a": 1,
            "b": "two: 2",
            "c": ["x", "it's", {"k": "v", "n": [3]}],
            "d": [{"e": None, "f": True}],
        },
        {"g": "tcp://host:5555"},
    ]
    for bad in ("a: [1, 2]\n", "a: |\n  x\n", "a:\n\t- 1\n", "a: 1\na: 2\n"):
        with pytest.raises(ValueError):
            mini_yaml_load_all(bad)


def _run_job_args(argv: list[str]) -> Any:
    """Parse ``python run_job.py ...`` arguments with run_job.py's own parser."""
    assert argv[0] == "python" and argv[1].endswith("run_job.py"), argv
    namespace: dict[str, Any] = {"__name__": "run_job"}
    exec(compile((SLURM / "run_job.py").read_text(), "run_job.py", "exec"), namespace)
    return namespace["parser"]().parse_args(argv[2:])


def _worker_args(argv: list[str]) -> Any:
    assert argv[0] == "zmqexecutor-worker", argv
    return worker_parser().parse_args(argv[1:])


# ---------------------------------------------------------------------------- Compose


def compose_interpolate(value: Any) -> Any:
    """Substitute ``${VAR:-default}`` with its default, as Compose does with VAR unset."""
    if isinstance(value, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [compose_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: compose_interpolate(v) for k, v in value.items()}
    return value


def test_compose_file() -> None:
    (raw,) = load_yaml(COMPOSE / "docker-compose.yml")
    compose = compose_interpolate(raw)
    services = compose["services"]
    assert set(services) == {"executor", "worker"}
    executor, worker = services["executor"], services["worker"]

    (secret,) = compose["secrets"]
    assert compose["secrets"][secret]["file"] == "./token"
    token_path = f"/run/secrets/{secret}"
    for service in (executor, worker):
        assert service["secrets"] == [secret]
        assert service["init"] is True  # tini reaps orphans; SIGTERM reaches the process
    # The image: built once from the repository root, used by both services.
    build = executor["build"]
    assert (COMPOSE / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"
    assert executor["image"] == worker["image"]

    job = _run_job_args(executor["command"])
    assert job.token_file == token_path
    listen_port = job.listen.rsplit(":", 1)[1]
    assert job.listen == f"tcp://0.0.0.0:{listen_port}"
    # as many worker hosts as the job waits for (both follow $WORKERS)
    assert int(worker["deploy"]["replicas"]) == job.hosts
    assert raw["services"]["worker"]["deploy"]["replicas"] == "${WORKERS:-3}"

    args = _worker_args(worker["command"])
    assert args.executor == f"tcp://executor:{listen_port}"  # the executor's service name
    assert args.token_file == token_path and args.token is None
    assert worker["depends_on"] == ["executor"]


def test_compose_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (COMPOSE / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.")
    for line in lines:
        if line.startswith("COPY"):
            *sources, _dest = shlex.split(line)[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the build context"
    cmd = next(line for line in lines if line.startswith("CMD"))
    assert ast.literal_eval(cmd[len("CMD") :].strip())[0] == "zmqexecutor-worker"


# ---------------------------------------------------------------------------- Kubernetes


def test_kubernetes_manifests() -> None:
    docs = load_yaml(KUBERNETES / "workers.yaml")
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["Deployment", "Job", "Service"]
    service, job, deployment = by_kind["Service"], by_kind["Job"], by_kind["Deployment"]
    assert service["apiVersion"] == "v1"
    assert job["apiVersion"] == "batch/v1"
    assert deployment["apiVersion"] == "apps/v1"

    # The executor: a Job whose pod the Service selects, listening on the Service's port.
    job_pod = job["spec"]["template"]
    assert job_pod["spec"]["restartPolicy"] == "Never"
    assert service["spec"]["selector"].items() <= job_pod["metadata"]["labels"].items()
    (executor,) = job_pod["spec"]["containers"]
    args = _run_job_args(executor["command"])
    (port,) = service["spec"]["ports"]
    assert args.listen == f"tcp://0.0.0.0:{port['targetPort']}"
    assert args.token_file is None  # the token comes from the environment
    assert args.hosts == deployment["spec"]["replicas"]

    # The workers: a Deployment whose pods connect to the Service.
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (worker,) = pod["spec"]["containers"]
    wargs = _worker_args(worker["command"])
    assert wargs.executor == f"tcp://{service['metadata']['name']}:{port['port']}"
    assert wargs.token is None and wargs.token_file is None
    assert worker["image"] == executor["image"]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30  # time to drain on SIGTERM

    # Both get the token from the same Secret, as the variable the CLI and executor read.
    refs = set()
    for container in (executor, worker):
        (env,) = [e for e in container["env"] if e["name"] == ENV_TOKEN]
        ref = env["valueFrom"]["secretKeyRef"]
        refs.add((ref["name"], ref["key"]))
    (secret_name, secret_key), *others = refs
    assert not others
    readme = (KUBERNETES / "README.md").read_text()
    assert f"kubectl create secret generic {secret_name} --from-file={secret_key}=" in readme, (
        "README must show how to create the Secret the manifests use"
    )
    for pod_spec in (job_pod["spec"], pod["spec"]):
        assert pod_spec["securityContext"]["runAsNonRoot"] is True


# ---------------------------------------------------------------------------- all of them


def test_every_deploy_file_is_checked_and_documented() -> None:
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert files == {
        "slurm/README.md",
        "slurm/zmqexecutor.sbatch",
        "slurm/run_job.py",
        "compose/README.md",
        "compose/docker-compose.yml",
        "compose/Dockerfile",
        "kubernetes/README.md",
        "kubernetes/workers.yaml",
    }
    for directory in (SLURM, COMPOSE, KUBERNETES):
        readme = (directory / "README.md").read_text()
        assert "python -m zmqexecutor token" in readme, directory
        for path in re.findall(r"\]\(([^)#:]+)\)", readme):  # relative links resolve
            assert (directory / path).exists(), f"{directory.name}/README.md links {path}"
