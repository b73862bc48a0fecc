"""Benchmark minillm against transformers and llama.cpp on the same weights, side by side in one run.

Rows: minillm's numpy backend, its numba backend with and without MTP, transformers'
DeepseekV3ForCausalLM (torch, float32) and llama.cpp through llama-cpp-python (F32 and BF16 GGUFs
exported here, driven token by token from Python), all on weights/minillm-tiny-baseline, plus
minillm on the default Engram model. Each row runs in its own subprocess, so its peak RSS is its
own. The rows take turns over --rounds rounds, so that machine noise hits them alike, and the
tables show medians. Every row uses the same thread count (default 1, because the benchmark
machine of docs/benchmarks.md has 2 shared cores). The output also gives the memory-bandwidth
limit of decoding, the numba backend's time to first token with a cold and a warm Numba cache,
and whether each speed goal is met.

Usage: python tools/bench.py [--rounds 3] [--threads 1] [--cases numpy transformers ...]
                             [--text FILE ...] [--json PATH]
The transformers row needs the `ref` extra and the llama.cpp rows need the `bench` extra. A row
whose packages are missing is skipped, and the output gives the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from minillm.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CORPUS = ROOT.parent / "shared/corpus/gutenberg_children"
HELD_OUT = [CORPUS / "pg00289_the_wind_in_the_willows.txt", CORPUS / "pg00778_five_children_and_it.txt"]
MODELS = {"baseline": ROOT / "weights" / "minillm-tiny-baseline", "default": ROOT / "weights" / "minillm-tiny"}
# case name: (engine, model key, speculative mode)
CASES = {
    "numpy": ("minillm-numpy", "baseline", "none"),
    "numba": ("minillm-numba", "baseline", "none"),
    "numba-mtp": ("minillm-numba", "baseline", "mtp"),
    "transformers": ("transformers", "baseline", "none"),
    "llama-cpp-python": ("llama-cpp-python", "baseline", "none"),
    "llama-cpp-python-bf16": ("llama-cpp-python", "baseline", "none"),
    "numpy-engram": ("minillm-numpy", "default", "none"),
    "numba-engram": ("minillm-numba", "default", "none"),
    "numba-mtp-engram": ("minillm-numba", "default", "mtp"),
}
# GGUF weight type of each llama.cpp row: F32 computes exactly what the others do; BF16 reads the
# bytes the numba backend reads, but llama.cpp then rounds activations to BF16 as well
GGUF_TYPES = {"llama-cpp-python": "f32", "llama-cpp-python-bf16": "bf16"}
# bytes per stored matrix value that each engine streams in a decode step (norms and router stay F32)
MATRIX_BYTES = {"minillm-numpy": 4, "minillm-numba": 2, "transformers": 4, "llama-cpp-python": 4,
                "llama-cpp-python-bf16": 2}
PROMPT_LENGTHS = (32, 512)
WARMUP_TOKENS = 8


# ---------------------------------------------------------------- engines (run inside a child)


class Minillm:
    def __init__(self, args, speculative: str, backend: str):
        import minillm

        self.model = minillm.load(args.model_dir, prefix_cache=False, cache_dir=args.workdir / "minillm-cache",
                                  backend=backend, threads=args.threads)
        self.speculative, self.draft_tokens = speculative, args.draft_tokens

    def generate(self, ids: list[int], new_tokens: int) -> list[int]:
        return list(self.model.generate_ids(ids, max_new_tokens=new_tokens, temperature=0, stop_at_eos=False,
                                            speculative=self.speculative, draft_tokens=self.draft_tokens))

    def prefill_seconds(self, ids: list[int]) -> float:
        self.generate(ids, 1)
        return self.model.last_stats.prefill_seconds

    def decode(self, ids: list[int], new_tokens: int) -> dict:
        tokens = self.generate(ids, new_tokens)
        stats = self.model.last_stats
        return {"tokens": tokens, "decode_seconds": stats.decode_seconds, "steps": stats.generated_tokens - 1,
                "acceptance_rate": stats.acceptance_rate, "tokens_per_forward": stats.tokens_per_forward}


class Transformers:
    def __init__(self, args):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import DeepseekV3ForCausalLM

        torch.set_num_threads(args.threads)
        self.torch = torch
        self.model = DeepseekV3ForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()

    def _forward(self, ids: list[int], cache=None):
        # transformers 5.25 names the KV cache argument `cache` and deprecates `past_key_values`
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.cache

    def prefill_seconds(self, ids: list[int]) -> float:
        started = time.perf_counter()
        self._forward(ids)
        return time.perf_counter() - started

    def decode(self, ids: list[int], new_tokens: int) -> dict:
        token, cache = self._forward(ids)
        tokens, started = [token], time.perf_counter()
        while len(tokens) < new_tokens:
            token, cache = self._forward([token], cache)
            tokens.append(token)
        return {"tokens": tokens, "decode_seconds": time.perf_counter() - started, "steps": new_tokens - 1}


class LlamaCpp:
    def __init__(self, args):
        import llama_cpp

        # F32 KV cache as in tests/test_gguf.py: minillm keeps the latent in float32 too.
        self.llama_cpp = llama_cpp
        longest = max(PROMPT_LENGTHS) + args.new_tokens
        self.model = llama_cpp.Llama(model_path=str(args.gguf), n_ctx=longest, n_batch=512, n_ubatch=512,
                                     n_threads=args.threads, n_threads_batch=args.threads, seed=0,
                                     type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)

    def _eval(self, ids: list[int]) -> int:
        # Without logits_all, Llama.eval stores no scores (llama-cpp-python 0.3.36), so the last
        # position's logits are read from the context. logits_all would compute every prompt position's.
        self.model.eval(ids)
        logits = self.llama_cpp.llama_get_logits_ith(self.model.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.model.n_vocab(),))))

    def prefill_seconds(self, ids: list[int]) -> float:
        self.model.reset()
        started = time.perf_counter()
        self._eval(ids)
        return time.perf_counter() - started

    def decode(self, ids: list[int], new_tokens: int) -> dict:
        self.model.reset()
        tokens = [self._eval(ids)]
        context = self.model.ctx
        self.llama_cpp.llama_perf_context_reset(context)
        started = time.perf_counter()
        while len(tokens) < new_tokens:
            tokens.append(self._eval([tokens[-1]]))
        seconds = time.perf_counter() - started
        perf = self.llama_cpp.llama_perf_context(context)
        # llama.cpp's own timer of its decode calls, without the Python around them
        native = perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms else None
        return {"tokens": tokens, "decode_seconds": seconds, "steps": new_tokens - 1,
                "native_decode_tokens_per_second": native}


def run_case(args) -> dict:
    engine_name, _, speculative = CASES[args.case]
    if engine_name == "transformers":
        engine = Transformers(args)
    elif engine_name == "llama-cpp-python":
        engine = LlamaCpp(args)
    else:
        engine = Minillm(args, speculative, backend=engine_name.removeprefix("minillm-"))
    prompts = {int(length): ids for length, ids in json.loads(args.prompts.read_text()).items()}
    engine.decode(prompts[32], WARMUP_TOKENS)
    result = {f"prefill_{n}_tokens_per_second": n / engine.prefill_seconds(prompts[n]) for n in PROMPT_LENGTHS}
    decode = engine.decode(prompts[32], args.new_tokens)
    result.update(decode, decode_tokens_per_second=decode["steps"] / decode["decode_seconds"])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def run_ttft(args) -> dict:
    """Time import, load and the first two tokens of the numba backend in this fresh process.
    This process has not imported minillm before, so the import and any compilation in it count."""
    started = time.perf_counter()
    import minillm

    imported = time.perf_counter()
    model = minillm.load(args.model_dir, prefix_cache=False, cache_dir=args.workdir / "minillm-cache",
                         backend="numba", threads=args.threads)
    loaded = time.perf_counter()
    prompt = json.loads(args.prompts.read_text())["32"]
    tokens = model.generate_ids(prompt, max_new_tokens=2, temperature=0, stop_at_eos=False, speculative="none")
    next(tokens)
    first = time.perf_counter()
    next(tokens)  # the first decode step, which runs the decode kernels that prefill does not
    second = time.perf_counter()
    tokens.close()
    return {"import_seconds": imported - started, "load_seconds": loaded - imported,
            "first_token_seconds": first - loaded, "total_seconds": first - started,
            "second_token_seconds": second - first}


# ---------------------------------------------------------------- the parent: prompts, limits, report


def read_prompts(model_dir: Path, texts: list[Path]) -> dict[int, list[int]]:
    """Cut one passage per prompt length from the held-out books, BOS included."""
    from minillm.io.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_directory(model_dir)
    rng = np.random.default_rng(0)
    books = [tokenizer.encode(path.read_text(encoding="utf-8"), add_bos=False) for path in texts]
    prompts = {}
    for i, length in enumerate(PROMPT_LENGTHS):
        book = books[i % len(books)]
        start = int(rng.integers(1000, len(book) - length - 1000))  # skip front and back matter
        prompts[length] = [tokenizer.bos_id] + book[start : start + length - 1]
    return prompts


def layer_values(cfg: ModelConfig, layer: int, experts_read: int) -> int:
    """Count the weight values one token reads in a decoder layer, with `experts_read` routed experts
    when it is an MoE layer."""
    D, H, C, R = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    if cfg.q_lora_rank:
        q = D * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * cfg.qk_head_dim
    else:
        q = D * H * cfg.qk_head_dim
    attention = q + D * (C + R) + C + C * H * (cfg.qk_nope_head_dim + cfg.v_head_dim) + H * cfg.v_head_dim * D
    if cfg.is_moe_layer(layer):
        E, F = cfg.n_routed_experts, cfg.moe_intermediate_size
        router = E * D + (E if cfg.uses_correction_bias else 0)
        ffn = router + 3 * D * F * (cfg.n_shared_experts or 0) + 3 * D * F * experts_read
    else:
        ffn = 3 * D * cfg.intermediate_size
    values = 2 * D + attention + ffn
    engram = cfg.engram
    if engram is not None and layer in engram.layer_ids:
        # key and value projections with biases, three norms, the depthwise conv, and one row per hash table
        values += (2 * (D * engram.embed_width + D) + 3 * D + D * engram.kernel_size
                   + engram.tables * engram.row_width)
    return values


def decode_weight_bytes(cfg: ModelConfig, experts_read: int | None = None, mtp_passes: int = 0) -> int:
    """Bytes of float32 weights one main-model decode step reads, plus `mtp_passes` MTP module passes."""
    k = cfg.num_experts_per_tok if experts_read is None else experts_read
    D, V = cfg.hidden_size, cfg.vocab_size
    values = sum(layer_values(cfg, layer, k) for layer in range(cfg.num_hidden_layers))
    values += D + D + V * D  # one embedding row, final norm, lm_head
    # MTP module: embedding row, enorm, hnorm, eh_proj, a decoder layer, shared_head norm and head
    values += mtp_passes * (3 * D + 2 * D * D + layer_values(cfg, cfg.num_hidden_layers, k) + D + V * D)
    return 4 * values


def kv_bytes_per_token(cfg: ModelConfig, prompt_tokens: int, new_tokens: int, mtp: bool = False) -> float:
    """Latent KV bytes one decode step reads, averaged over the decode: the context grows by one a step.
    With `mtp`, the MTP module's own cache counts as one more layer."""
    layers = cfg.num_hidden_layers + (1 if mtp else 0)
    return layers * cfg.latent_dim * 4 * (prompt_tokens + new_tokens / 2)


def copy_bandwidth(nbytes: int, copies: int, trials: int = 5) -> float:
    """Measure bytes/s of np.copyto on one thread, counting read plus write bytes, best of `trials`."""
    # NOTE: the copy runs on one thread even with --threads above 1, so the limit it gives is then too low.
    source = np.ones(nbytes // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = float("inf")
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(copies):
            np.copyto(target, source)
        best = min(best, (time.perf_counter() - started) / copies)
    return 2 * nbytes / best


def l3_bytes() -> int | None:
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        if (index / "level").read_text().strip() == "3":
            size = (index / "size").read_text().strip()
            return int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20}[size[-1]]
    return None


def machine_line() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} cores"


def versions_line() -> str:
    versions = [f"Python {platform.python_version()}"]
    for package in ("numpy", "numba", "torch", "transformers", "llama-cpp-python", "gguf"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    return ", ".join(versions)


def run_child(args, mode: str, name: str, model_key: str, extra_env: dict | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), mode, name, "--model-dir", str(MODELS[model_key]),
               "--prompts", str(args.workdir / f"prompts-{model_key}.json"), "--threads", str(args.threads),
               "--new-tokens", str(args.new_tokens), "--draft-tokens", str(args.draft_tokens),
               "--workdir", str(args.workdir)]
    if name in GGUF_TYPES and args.gguf:
        command += ["--gguf", str(args.gguf[GGUF_TYPES[name]])]
    env = {**os.environ, **args.thread_env, **(extra_env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_row(results: list[dict]) -> dict:
    good = [r for r in results if "error" not in r]
    if not good:
        return {"error": results[0]["error"]}
    row = {"tokens": good[0]["tokens"]}
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and all(r.get(key) is not None for r in good):
            row[key] = statistics.median(r[key] for r in good)
    return row


def ratio(rows: dict, name: str, other: str) -> float | None:
    """Return the decode speed of row `name` over row `other`, None unless both ran."""
    a, b = rows.get(name, {"error": "not run"}), rows.get(other, {"error": "not run"})
    if "error" in a or "error" in b:
        return None
    return a["decode_tokens_per_second"] / b["decode_tokens_per_second"]


def fmt(value, spec: str = ",.1f", unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def table_lines(rows: dict) -> list[str]:
    lines = ["| engine | weights | prefill 32 tok/s | prefill 512 tok/s | decode tok/s | peak RSS MiB | "
             "decode vs transformers | vs llama-cpp-python |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        weights = MODELS[CASES[name][1]].name
        if "error" in row:
            lines.append(f"| {name} | {weights} | skipped: {row['error']} | | | | | |")
            continue
        lines.append(f"| {name} | {weights} | {fmt(row['prefill_32_tokens_per_second'])} | "
                     f"{fmt(row['prefill_512_tokens_per_second'])} | {fmt(row['decode_tokens_per_second'])} | "
                     f"{fmt(row['peak_rss_mib'], ',.0f')} | {fmt(ratio(rows, name, 'transformers'), '.2f', 'x')} | "
                     f"{fmt(ratio(rows, name, 'llama-cpp-python'), '.2f', 'x')} |")
    return lines


def token_lines(rows: dict) -> list[str]:
    """Compare every row's greedy tokens with the numpy row on the same weights."""
    lines = []
    for name, row in rows.items():
        reference = "numpy" if CASES[name][1] == "baseline" else "numpy-engram"
        if "error" in row or name == reference or "error" in rows.get(reference, {"error": "not run"}):
            continue
        first = next((i for i, (a, b) in enumerate(zip(row["tokens"], rows[reference]["tokens"])) if a != b), None)
        text = f"equal to {reference}'s" if first is None else f"differ from {reference}'s at token {first}"
        if CASES[name][2] == "mtp":
            text += (f"; MTP acceptance {row['acceptance_rate']:.3f}, "
                     f"{row['tokens_per_forward']:.2f} tokens per forward")
        lines.append(f"{name}: greedy tokens {text}")
    return lines


def goal_line(text: str, value: float | None, target: float, unit: str = "x", at_most: bool = False) -> str:
    if value is None:
        return f"- {text}: not measured (a row it needs was skipped or not run)"
    met = value <= target if at_most else value >= target
    bound = "<=" if at_most else ">="
    return f"- {text}: {value:.2f}{unit}, goal {bound} {target:g}{unit}: {'met' if met else 'NOT met'}"


def goal_lines(rows: dict, ttft: dict) -> list[str]:
    native = rows.get("llama-cpp-python", {}).get("native_decode_tokens_per_second")
    mtp = rows.get("numba-mtp", {}).get("decode_tokens_per_second")
    lines = []
    if native:
        lines.append(f"llama.cpp's own decode timer (llama_perf_context, no Python around the calls): "
                     f"{native:,.1f} tok/s")
    warm = ttft.get("warm", {}).get("total_seconds")
    return lines + [
        "Goals (numba backend, baseline weights):",
        goal_line("decode vs transformers, no MTP", ratio(rows, "numba", "transformers"), 10),
        goal_line("decode vs llama-cpp-python, no MTP", ratio(rows, "numba", "llama-cpp-python"), 1.0),
        goal_line("decode with MTP vs llama.cpp's own timer", mtp / native if mtp and native else None, 1.0),
        goal_line("decode vs the numpy backend, no MTP", ratio(rows, "numba", "numpy"), 5),
        goal_line("time to first token, warm Numba cache", warm, 1.0, " s", at_most=True),
    ]


def ttft_lines(ttft: dict) -> list[str]:
    lines = []
    for kind, t in ttft.items():
        if "error" in t:
            lines.append(f"Time to first token, {kind} Numba cache: not measured ({t['error']})")
            continue
        lines.append(f"Time to first token, {kind} Numba cache: {t['total_seconds']:.2f} s (import "
                     f"{t['import_seconds']:.2f} s, load {t['load_seconds']:.2f} s, prefill and first token "
                     f"{t['first_token_seconds']:.2f} s); the second token took {t['second_token_seconds']:.2f} s more")
    if lines:
        lines.append("Measured in a fresh process from `import minillm` to the first token of the 32-token prompt; "
                     "cold starts from an empty NUMBA_CACHE_DIR, warm reuses it.")
    return lines


def limit_lines(rows: dict, bandwidth: dict) -> list[str]:
    lines = []
    limit_bandwidth = bandwidth[bandwidth["applies"]]
    for name, row in rows.items():
        if "error" in row:
            continue
        _, model, speculative = CASES[name]
        engine = name if name in MATRIX_BYTES else CASES[name][0]
        parts = bandwidth["bytes_per_token"][model][speculative]
        per_token = parts["weights"] * MATRIX_BYTES[engine] / 4 + parts["kv"]
        if speculative == "mtp":
            per_token /= row["tokens_per_forward"]
        limit = limit_bandwidth / per_token
        lines.append(f"{name}: {row['decode_tokens_per_second'] / limit:.1%} of the {bandwidth['applies']} limit "
                     f"({limit:,.0f} tok/s at {per_token / 2**20:.2f} MiB per token)")
    return lines


def report(rows: dict, ttft: dict, bandwidth: dict) -> list[str]:
    return [*table_lines(rows), "", *token_lines(rows), "", *goal_lines(rows, ttft), *ttft_lines(ttft), "",
            *bandwidth["lines"], *limit_lines(rows, bandwidth)]


def bandwidth_report(args) -> dict:
    """Measure copy bandwidth and compute the decode limits of both models."""
    from minillm.config import ModelConfig

    dram = copy_bandwidth(1 << 30, copies=1)
    cache = copy_bandwidth(16 << 20, copies=64)
    l3 = l3_bytes()
    result = {"dram": dram, "cache": cache, "l3_bytes": l3, "bytes_per_token": {}, "resident_bytes": {}}
    for key, path in MODELS.items():
        cfg = ModelConfig.from_file(path)
        # float32 weight bytes, scaled per engine by MATRIX_BYTES in limit_lines; the KV is float32 everywhere
        result["bytes_per_token"][key] = {
            "none": {"weights": decode_weight_bytes(cfg), "kv": kv_bytes_per_token(cfg, 32, args.new_tokens)},
            "mtp": {"weights": decode_weight_bytes(cfg, mtp_passes=args.draft_tokens),
                    "kv": kv_bytes_per_token(cfg, 32, args.new_tokens, mtp=True)}}
        # every weight a long decode touches: all experts, the MTP module, not the embedding table
        result["resident_bytes"][key] = decode_weight_bytes(cfg, experts_read=cfg.n_routed_experts, mtp_passes=1)
    resident = max(result["resident_bytes"].values())
    result["applies"] = "cache" if l3 is not None and resident < l3 else "dram"
    base = sum(result["bytes_per_token"]["baseline"]["none"].values())
    kv = kv_bytes_per_token(ModelConfig.from_file(MODELS["baseline"]), 32, args.new_tokens)
    l3_text = f"{l3 / 2**20:,.0f} MiB" if l3 else "unknown"
    result["lines"] = [
        "Decode limit = copy bandwidth / bytes read per decoded token. Bytes per token = b x (attention, norms, "
        "dense FFN, shared experts and router of every layer + num_experts_per_tok of n_routed_experts routed "
        "experts per MoE layer + Engram projections and one row per hash table + final norm + lm_head + one "
        "embedding row) + layers x (kv_lora_rank + qk_rope_head_dim) x 4 x (32 prompt + new tokens / 2), where b "
        "is the bytes per weight the engine streams: 2 for the numba backend and the BF16 GGUF, which read BF16 "
        "matrices, 4 for the others. With "
        f"MTP: (one step + draft_tokens = {args.draft_tokens} MTP module passes, whose KV counts as one more layer) / "
        "measured "
        "tokens per forward, a lower bound because verified tokens can route to more experts.",
        f"Baseline, no MTP, b = 4: {base / 2**20:.3f} MiB per token, of which KV {kv / 2**10:.1f} KiB.",
        f"Copy bandwidth, one thread, read + write bytes: {dram / 1e9:.1f} GB/s between 1 GiB arrays "
        f"(limit {dram / base:,.0f} tok/s), {cache / 1e9:.1f} GB/s between 16 MiB arrays in cache "
        f"(limit {cache / base:,.0f} tok/s).",
        f"L3 {l3_text}; every float32 weight a decode can touch, MTP included: {resident / 2**20:.0f} MiB, so the "
        f"{'cache' if result['applies'] == 'cache' else 'DRAM'} limit applies.",
    ]
    return result


def export_gguf(args) -> tuple[dict[str, Path] | None, str | None]:
    """Write the baseline as GGUF once per weight type the llama.cpp rows need."""
    try:
        import llama_cpp  # noqa: F401
        from tools.export_gguf import export_gguf as export
    except ImportError as exc:
        return None, f"{exc} (install the bench extra)"
    paths = {}
    for outtype in sorted({GGUF_TYPES[name] for name in args.cases if name in GGUF_TYPES}):
        paths[outtype] = args.workdir / f"baseline-{outtype}.gguf"
        export(MODELS["baseline"], paths[outtype], outtype=outtype)
    return paths, None


def main_parent(args) -> None:
    missing = [str(path) for path in args.text if not path.is_file()]
    if missing:
        raise SystemExit(f"error: prompt text not found: {', '.join(missing)}; pass books with --text FILE ...")
    print(f"Machine: {machine_line()}")
    print(f"Software: {versions_line()}")
    print(f"Command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {args.threads} thread(s) for every engine; "
          f"median of {args.rounds} round(s)\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="minillm-bench-") as workdir:
        args.workdir = Path(workdir)
        args.thread_env = {name: str(args.threads) for name in
                           ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
        for key, path in MODELS.items():
            prompts = read_prompts(path, args.text)
            (args.workdir / f"prompts-{key}.json").write_text(json.dumps(prompts))
        needs_gguf = any(name in GGUF_TYPES for name in args.cases)
        args.gguf, gguf_error = export_gguf(args) if needs_gguf else (None, None)
        cache_env = {"NUMBA_CACHE_DIR": str(args.workdir / "numba-cache")}
        ttft = {}
        if any(CASES[name][0] == "minillm-numba" for name in args.cases):
            ttft = {"cold": run_child(args, "--ttft", "numba", "baseline", cache_env),
                    "warm": run_child(args, "--ttft", "numba", "baseline", cache_env)}
        results = {name: [] for name in args.cases}
        for round_index in range(args.rounds):
            order = args.cases[round_index % len(args.cases):] + args.cases[:round_index % len(args.cases)]
            for name in order:
                if name in GGUF_TYPES and gguf_error:
                    results[name].append({"error": gguf_error})
                    continue
                result = run_child(args, "--case", name, CASES[name][1], cache_env)
                results[name].append(result)
                progress = result.get("decode_tokens_per_second", result.get("error"))
                print(f"round {round_index + 1} {name}: decode {progress}", file=sys.stderr, flush=True)
    rows = {name: median_row(results[name]) for name in args.cases}
    bandwidth = bandwidth_report(args)
    print("\n".join(report(rows, ttft, bandwidth)))
    if args.json:
        record = {"machine": machine_line(), "software": versions_line(), "command": sys.argv,
                  "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "rounds": results, "rows": rows,
                  "ttft": ttft, "bandwidth": bandwidth}
        args.json.write_text(json.dumps(record, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of every case; the report shows medians")
    parser.add_argument("--threads", type=int, default=1, help="threads for every engine (default 1)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE",
                        help=f"rows to run (default all): {', '.join(CASES)}")
    parser.add_argument("--text", type=Path, nargs="+", default=HELD_OUT, help="books to cut the prompts from")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated in the decode measurement")
    parser.add_argument("--draft-tokens", type=int, default=1, help="MTP draft tokens per step")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    child = parser.add_mutually_exclusive_group()
    child.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    child.add_argument("--ttft", choices=["numba"], help=argparse.SUPPRESS)
    for name in ("--model-dir", "--prompts", "--workdir", "--gguf"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
    elif args.ttft:
        print(json.dumps(run_ttft(args)))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
