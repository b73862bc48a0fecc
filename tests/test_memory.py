"""The memory hierarchy: identical output under every budget, spilling, expert streaming, the
persistent prefix cache (atomic, checksummed, shared between processes) and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm.errors import MemoryConfigError
from minillm.memory.prefix_cache import PrefixCache
from minillm.memory.sizes import parse_size

from helpers import TINY_V3, write_checkpoint, write_tokenizer

PAGE = 8  # tokens per KV page in these tests, so short prompts span many pages
PROMPT = [0] + list(range(40, 90))  # 51 tokens: 6 full pages reusable from the prefix cache


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = write_checkpoint(tmp_path_factory.mktemp("mem_model"), {**TINY_V3, "num_nextn_predict_layers": 1},
                                 seed=4)
    write_tokenizer(directory)
    return directory


def load(model_dir, cache_dir, **budgets):
    return minillm.load(model_dir, cache_dir=cache_dir, page_tokens=PAGE, **budgets)


def greedy(model, prompt=PROMPT, n=24, speculative="auto"):
    return list(model.generate_ids(prompt, max_new_tokens=n, temperature=0, stop_at_eos=False,
                                   speculative=speculative))


def budgets_for(model_dir, hot_pages, dram_pages=None):
    """hbm for `hot_pages` KV pages (experts get as much again), dram for the checkpoint plus
    `dram_pages` pages (None: plenty)."""
    probe = load(model_dir, None, prefix_cache=False)
    pinned = probe.memory.tiers["hbm"].used["weights"]
    page_bytes = probe.config.num_hidden_layers * PAGE * probe.config.latent_dim * 4
    checkpoint = probe.memory.tiers["dram"].used["weights"]
    dram = "1GiB" if dram_pages is None else checkpoint + dram_pages * page_bytes
    return {"hbm": pinned + 2 * hot_pages * page_bytes, "dram": dram}


@pytest.mark.parametrize("text, size", [("4096", 4096), ("64MiB", 64 * 2**20), ("1.5 GiB", int(1.5 * 2**30)),
                                        ("2GB", 2 * 10**9), ("512k", 512 * 1024), (1000, 1000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5MiB", "5 parsecs"])
def test_parse_size_rejects(text):
    with pytest.raises(MemoryConfigError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("speculative", ["none", "mtp"])
@pytest.mark.parametrize("hot_pages, dram_pages", [(None, None), (1, None), (2, 2), (3, 1), (1, 0)])
def test_output_identical_for_every_budget(model_dir, tmp_path, speculative, hot_pages, dram_pages):
    """The numba backend, attending over pages in every tier, against the NumPy reference with all in hbm."""
    expected = greedy(load(model_dir, tmp_path / "all", prefix_cache=False, backend="numpy"), speculative="none")
    budgets = {} if hot_pages is None else budgets_for(model_dir, hot_pages, dram_pages)
    model = load(model_dir, tmp_path / "tiers", prefix_cache=False, **budgets)
    assert greedy(model, speculative=speculative) == expected
    pages = model.last_snapshot["pages"]
    if hot_pages is not None:
        assert pages["hbm"] <= hot_pages
        assert pages["dram"] + pages["ssd"] > 0
    if dram_pages is not None and hot_pages is not None:
        assert pages["ssd"] > 0
        assert model.last_snapshot["tiers"]["ssd"]["bytes_in"] > 0


def test_spill_file_removed_after_generation(model_dir, tmp_path):
    model = load(model_dir, tmp_path, prefix_cache=False, **budgets_for(model_dir, 1, 0))
    greedy(model)
    assert model.last_snapshot["pages"]["ssd"] > 0
    assert not list(tmp_path.glob("kv-spill-*"))


def test_cold_pages_are_prefetched(model_dir, tmp_path):
    model = load(model_dir, tmp_path, prefix_cache=False, **budgets_for(model_dir, 1))
    greedy(model, n=30)
    snapshot = model.last_snapshot
    assert snapshot["prefetch_hits"] + snapshot["prefetch_stalls"] > 0
    assert snapshot["tiers"]["dram"]["bytes_out"] > 0  # cold pages were read back for attention


def test_experts_stream_with_lru(model_dir, tmp_path):
    roomy = load(model_dir, tmp_path, prefix_cache=False)
    greedy(roomy)
    assert roomy.last_snapshot["expert_misses"] <= 24  # 2 MoE layers + the MTP block, 8 experts each, loaded once
    assert roomy.last_snapshot["expert_hits"] > 0

    tight = load(model_dir, tmp_path, prefix_cache=False, **budgets_for(model_dir, 2))
    assert greedy(tight) == greedy(roomy)
    snapshot = tight.last_snapshot
    assert snapshot["expert_misses"] > roomy.last_snapshot["expert_misses"]
    assert snapshot["expert_bytes_streamed"] > 0
    assert snapshot["tiers"]["hbm"]["used_by_kind"]["experts"] <= tight.expert_cache.budget


def test_snapshots_published_every_token(model_dir, tmp_path):
    model = load(model_dir, tmp_path, prefix_cache=False)
    snapshots = []
    ids = list(model.generate_ids(PROMPT, max_new_tokens=5, temperature=0, on_snapshot=snapshots.append))
    assert len(snapshots) == len(ids) == 5
    last = snapshots[-1]
    assert set(last["tiers"]) == {"hbm", "dram", "ssd"}
    for tier in last["tiers"].values():
        assert {"capacity_bytes", "used_bytes", "bytes_in", "bytes_out", "used_by_kind"} <= set(tier)
    assert last["page_map"] == "h" * 7  # 51 + 4 tokens in pages of 8
    assert last["generation"]["generated_tokens"] == 5
    assert sum(map(sum, last["routing"]["counts"])) > 0


def test_prefix_cache_reused_across_processes(model_dir, tmp_path):
    expected = greedy(load(model_dir, tmp_path / "none", prefix_cache=False))
    script = ("import json, sys, minillm; m = minillm.load(sys.argv[1], cache_dir=sys.argv[2], page_tokens=8); "
              f"ids = list(m.generate_ids({PROMPT}, max_new_tokens=24, temperature=0, stop_at_eos=False)); "
              "print(json.dumps([ids, m.last_stats.prefix_cache_hit_tokens]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, str(model_dir), str(tmp_path / "c")],
                                      capture_output=True, text=True, check=True).stdout) for _ in range(2)]
    assert runs[0] == [expected, 0]
    assert runs[1] == [expected, 6 * PAGE]


def page_files(cache_dir):
    return sorted(cache_dir.glob("prefix/*/*.kvpage"))


def test_corrupt_page_detected_and_rebuilt(model_dir, tmp_path, caplog):
    expected = greedy(load(model_dir, tmp_path, prefix_cache=True))
    victim = page_files(tmp_path)[0]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the payload
    victim.write_bytes(bytes(data))
    model = load(model_dir, tmp_path)
    assert greedy(model) == expected
    assert "checksum mismatch" in caplog.text
    assert greedy(load(model_dir, tmp_path)) == expected  # the page was rewritten: all hits now
    assert caplog.text.count("checksum mismatch") == 1


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_damaged_page_files_skipped(model_dir, tmp_path, caplog, damage):
    expected = greedy(load(model_dir, tmp_path))
    for path in page_files(tmp_path):
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 3])
        elif damage == "foreign":
            path.write_bytes(data.replace(data[data.index(b'"fingerprint": "') + 16:][:8], b"00000000", 1))
        else:
            path.write_bytes(os.urandom(len(data)))
    model = load(model_dir, tmp_path)
    assert greedy(model) == expected
    assert model.last_stats.prefix_cache_hit_tokens == 0
    assert "skipping it and recomputing" in caplog.text


WRITER = """
import sys, numpy as np
from pathlib import Path
from minillm.memory.prefix_cache import PrefixCache
cache = PrefixCache(Path(sys.argv[1]), "f" * 64, 8, 1 << 40)
values = np.ones((3, 8, 4096), dtype=np.float32)  # 384 KiB pages: writes take a while
print("ready", flush=True)
page = 0
while True:
    cache.write(np.arange(100000), page % 50, values)
    page += 1
"""


def test_killed_writer_leaves_no_corrupt_page(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    cache = PrefixCache(tmp_path, "f" * 64, 8, 1 << 40)
    ids = np.arange(100000)
    readable = [page for page in range(50) if cache.read(ids, page, (3, 8, 4096)) is not None]
    assert readable  # it wrote some pages before dying
    for page in readable:
        np.testing.assert_array_equal(cache.read(ids, page, (3, 8, 4096))[0], 1.0)
    # the page being written when the process died is at worst a leftover temporary file
    assert all(p.name.startswith(".") for p in (tmp_path / "prefix").glob("*/*.tmp"))


def test_killed_generation_then_correct_output(model_dir, tmp_path):
    expected = greedy(load(model_dir, tmp_path / "ref", prefix_cache=False))
    script = ("import sys, minillm; m = minillm.load(sys.argv[1], cache_dir=sys.argv[2], page_tokens=8); "
              f"[None for _ in m.generate_ids({PROMPT}, max_new_tokens=10000, temperature=0, stop_at_eos=False)]")
    proc = subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(tmp_path / "c")])
    time.sleep(3.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert greedy(load(model_dir, tmp_path / "c")) == expected


def test_two_processes_share_the_cache(model_dir, tmp_path):
    script = ("import json, sys, minillm; m = minillm.load(sys.argv[1], cache_dir=sys.argv[2], page_tokens=8); "
              f"print(json.dumps(list(m.generate_ids({PROMPT}, max_new_tokens=12, temperature=0))))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(tmp_path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [json.loads(p.communicate()[0]) for p in procs]
    assert outputs[0] == outputs[1]
    # every page either process wrote is intact: a third run reads them all back
    third = load(model_dir, tmp_path)
    assert greedy(third, n=12) == outputs[0]
    assert third.last_stats.prefix_cache_hit_tokens == 6 * PAGE


def test_prefix_cache_size_limit_evicts(model_dir, tmp_path):
    page_bytes = 3 * PAGE * 40 * 4
    model = load(model_dir, tmp_path, ssd=3 * (page_bytes + 400))  # room for three page files
    expected = greedy(load(model_dir, tmp_path / "ref", prefix_cache=False))
    assert greedy(model) == expected
    assert 0 < len(page_files(tmp_path)) <= 3


def test_unwritable_cache_dir_still_generates(model_dir, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = load(model_dir, blocker / "cache")
    expected = greedy(load(model_dir, tmp_path / "ok", prefix_cache=False))
    assert greedy(model) == expected
    assert "is not writable" in caplog.text


def test_hbm_smaller_than_one_page(model_dir, tmp_path):
    budgets = budgets_for(model_dir, 1)
    with pytest.raises(MemoryConfigError, match="less than one page"):
        load(model_dir, tmp_path, hbm=budgets["hbm"] - 2 * 3 * PAGE * 40 * 4 + 100)


def test_kv_outgrowing_every_tier(model_dir, tmp_path):
    budgets = budgets_for(model_dir, 1, 0)
    model = load(model_dir, tmp_path, ssd=2 * 3 * PAGE * 40 * 4, prefix_cache=False, **budgets)
    with pytest.raises(MemoryConfigError, match="no longer fits the tier budgets: raise --dram or --ssd"):
        greedy(model)


def test_cli_tier_flags_and_cache_command(model_dir, tmp_path):
    args = [sys.executable, "-m", "minillm.cli"]
    common = ["--model", str(model_dir), "--cache-dir", str(tmp_path), "--page-tokens", "8"]
    prompt = "Once upon a time there was a little fox who lived in the woods."
    result = subprocess.run(args + ["generate", *common, "--prompt", prompt, "-n", "6", "--temperature", "0",
                                    "--stats", "--stats-every", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert len(lines) == 4  # three snapshots (tokens 2, 4, 6) and the final statistics
    final = lines[-1]
    assert set(final["tiers"]) == {"hbm", "dram", "ssd"}
    assert "time_to_first_token_seconds" in final
    assert final["prefix_cache_hit_tokens"] == 0

    again = subprocess.run(args + ["generate", *common, "--prompt", prompt, "-n", "6", "--temperature", "0",
                                   "--stats"], capture_output=True, text=True)
    assert json.loads(again.stderr.strip().splitlines()[-1])["prefix_cache_hit_tokens"] > 0
    assert again.stdout == result.stdout

    listing = subprocess.run(args + ["cache", "list", "--cache-dir", str(tmp_path)], capture_output=True, text=True)
    assert "pages" in listing.stdout
    cleared = subprocess.run(args + ["cache", "clear", "--cache-dir", str(tmp_path)], capture_output=True, text=True)
    assert cleared.returncode == 0
    assert not page_files(tmp_path)

    bad = subprocess.run(args + ["generate", *common, "--prompt", "x", "--hbm", "lots"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "minillm: error: invalid --hbm budget 'lots': use a size like 4096, 512KiB, 64MiB or 2GB"


def test_stale_spill_files_are_removed(tmp_path):
    """A killed run's spill file (its pid no longer runs) goes; a live process's file stays."""
    from minillm.cli import main
    from minillm.memory.spill import SpillFile

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"kv-spill-{finished.stdout.strip()}-abc.bin"
    legacy = tmp_path / "kv-spill-abc123.bin"  # a name without a pid, from before pids were recorded
    live = tmp_path / f"kv-spill-{os.getpid()}-abc.bin"
    for path in (stale, legacy, live):
        path.write_bytes(b"x")
    spill = SpillFile(tmp_path, (2, 4, 8))  # a new spill file cleans up first
    assert not stale.exists()
    assert not legacy.exists()
    assert live.exists()
    spill.close()
    stale.write_bytes(b"x")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert not stale.exists()
    assert live.exists()


def test_cache_commands_cover_compiled_kernels(tmp_path, capsys):
    """`cache list` shows compiled-kernel folders, marking older sources; `cache clear` removes them."""
    from minillm import kernels
    from minillm.cli import main

    current, older = tmp_path / kernels.cache_folder_name(), tmp_path / "kernels-0123456789abcdef"
    for folder in (current, older):
        folder.mkdir()
        (folder / "kernel.nbc").write_bytes(b"x" * 100)
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert f"{current.name}: 100 B (this version)" in listing
    assert f"{older.name}: 100 B (older kernel sources" in listing
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 2 compiled-kernel folders" in capsys.readouterr().out
    assert not current.exists()
    assert not older.exists()


def test_sigterm_deletes_the_spill_file(tmp_path):
    """The default model (16k context) keeps generating long enough to be stopped mid-run; 33 MiB of
    dram leaves room for a few pages next to its checkpoint, so the 800-token prompt spills to ssd."""
    prompt = (minillm.DEFAULT_MODEL_DIR / "README.md").read_text(encoding="utf-8")[:3000]
    command = [sys.executable, "-m", "minillm.cli", "generate", "--cache-dir", str(tmp_path), "--prompt", prompt,
               "-n", "100000", "--page-tokens", "16", "--hbm-kv", "40KiB", "--dram", "33MiB", "--no-prefix-cache"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob("kv-spill-*.bin")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(tmp_path.glob("kv-spill-*.bin")), "the run never spilled a page"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert "Traceback" not in proc.stderr.read()
    assert not list(tmp_path.glob("kv-spill-*.bin"))
