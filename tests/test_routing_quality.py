"""The routing-quality benchmark at tiny size: its CSV reading, contamination filter, sweep,
APGR and report, on a synthetic set it writes and on the real reference data."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "routing_quality.py"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_quality", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_quality"] = module
    spec.loader.exec_module(module)
    return module


def write_set(root: Path, n: int) -> None:
    """Long prompts are the ones only the strong model gets right, so length is an oracle."""
    (root / "mmlu").mkdir(parents=True)
    rows = []
    for i in range(n):
        hard = i % 3 == 0
        prompt = f"Question {i}: " + ("why does it hold, step by step? " * 20 if hard else "hi")
        rows.append({"prompt": prompt, WEAK: str(not hard), STRONG: "True"})
    fields = ["prompt", WEAK, STRONG]
    with (root / "gsm8k_responses.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, [*fields, f"{WEAK}_response", f"{STRONG}_response"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, f"{WEAK}_response": "x" * 40, f"{STRONG}_response": "y" * 80})
    with (root / "mmlu" / "mmlu_synthetic.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    for name in ("gsm8k", "mmlu"):
        line = json.dumps({"eval_prompt": rows[0]["prompt"], "train_prompt": "x"})
        (root / f"{name}_contaminated_prompts.jsonl").write_text(line + "\n", encoding="utf-8")


def test_synthetic_set_end_to_end(bench: Any, tmp_path: Path) -> None:
    write_set(tmp_path / "data", 120)
    out = tmp_path / "report.md"
    figures = bench.main(
        [
            "--data",
            str(tmp_path / "data"),
            "--bootstrap",
            "5",
            "--timing-reps",
            "5",
            "--markdown",
            str(out),
        ]
    )
    text = out.read_text(encoding="utf-8")
    assert "**GSM8K, held-out" in text and "**MMLU, all (119 prompts)**" in text  # one contaminated
    for split in ("held-out", "tune", "all"):
        # Length is an oracle here; a perfect ranker's APGR is 1 - share_hard / 2 (~0.8).
        assert figures[f"MMLU.{split}.length"] > 0.75 > 0.25 + figures[f"MMLU.{split}.random"]
        assert figures[f"MMLU.{split}.classifier"] > figures[f"MMLU.{split}.random"]
    assert figures["short_us"] > 0 and figures["long_80k_us"] > 0
    assert "| router | APGR | 95% interval |" in text and "premium calls for 95% of the gap" in text
    mix = [figures[f"MMLU.mix.{t}"] for t in ("economy", "standard", "premium")]
    assert sum(mix) == pytest.approx(1.0)
    assert figures["MMLU.gain_half_width"] >= 0
    assert "| MMLU | " in text.split("**GSM8K, held-out")[0]  # the summary row leads


def test_apgr_of_the_weak_and_strong_lines(bench: Any) -> None:
    pts = [bench.Point(0, 0.0, 0.6, 0), bench.Point(0, 0.5, 0.7, 0), bench.Point(0, 1.0, 0.8, 0)]
    assert bench.apgr(pts, 0.6, 0.8) == pytest.approx(0.5)  # a straight line is random's
    pts[1] = bench.Point(0, 0.5, 0.8, 0)
    assert bench.apgr(pts, 0.6, 0.8) == pytest.approx(0.75)


def test_split_is_stable_and_near_half(bench: Any) -> None:
    prompts = [f"p{i}" for i in range(2000)]
    first = [bench.held_out(p) for p in prompts]
    assert first == [bench.held_out(p) for p in prompts]
    assert 0.45 < sum(first) / len(first) < 0.55


def test_real_reference_data_at_tiny_size(bench: Any, tmp_path: Path) -> None:
    # The data ships in the repository: its absence is a failure, not a skip.
    assert (bench.data_dir() / "gsm8k_responses.csv").is_file()
    figures = bench.main(["--limit", "150", "--bootstrap", "0", "--timing-reps", "5"])
    for name in ("GSM8K", "MMLU"):
        assert 0.0 < figures[f"{name}.all.classifier"] < 1.5
    # MT-Bench's questions ship too: every category is reported, each mix sums to one.
    cats = {key.split(".")[1] for key in figures if key.startswith("mt_bench.")}
    assert cats == {
        "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"
    }  # fmt: skip
    for cat in cats:
        shares = [figures[f"mt_bench.{cat}.{t}"] for t in ("economy", "standard", "premium")]
        assert sum(shares) == pytest.approx(1.0)
    # The coding set ships with its outcomes, and MBPP's requests for the task-type check.
    assert 0.0 < figures["HumanEval.all.classifier"] < 1.5
    assert "mbpp.coding in prose (MBPP).premium" in figures


def test_mmlu_subjects_fall_into_their_groups(bench: Any) -> None:
    assert bench.mmlu_group("college_physics") == "STEM"
    assert bench.mmlu_group("professional_law") == "humanities"
    assert bench.mmlu_group("sociology") == "social sciences"
    assert bench.mmlu_group("nutrition") == "other"
    subjects = {p.stem.removeprefix("mmlu_") for p in (bench.data_dir() / "mmlu").glob("*.csv")}
    named = {s for names in bench.MMLU_GROUPS.values() for s in names}
    assert named <= subjects  # no misspelt subject silently lands in "other"


def test_mt_bench_outcomes_pair_each_question_with_both_grades(bench: Any) -> None:
    items = bench.load_mt_bench_outcomes(bench.data_dir(), bench.mt_bench_dir())
    assert len(items) == 80
    by_cat: dict[str, list[Any]] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
        assert 1.0 <= it.weak <= 10.0 and 1.0 <= it.strong <= 10.0
    assert sorted(len(v) for v in by_cat.values()) == [10] * 8

    def gap(cat: str) -> float:
        return sum(it.strong - it.weak for it in by_cat[cat]) / 10

    assert gap("coding") > gap("writing")  # where the strong model is worth paying for


def test_mt_bench_set_is_reported_with_intervals_and_categories(bench: Any) -> None:
    items = bench.load_mt_bench_outcomes(bench.data_dir(), bench.mt_bench_dir())
    models = {m.id: m for m in bench.load_bundled()}
    lines, figures, row = bench.report_dataset(
        "MT-Bench",
        items,
        4,
        10,
        models[bench.ECONOMY_MODEL],
        models[bench.PREMIUM_MODEL],
        None,
        categories_from="all",
    )
    text = "\n".join(lines)
    assert row is not None and row.startswith("| MT-Bench |")
    assert "mean judge score" in text and "By category (all)" in text
    assert "| coding | 10 |" in text
    for router in ("classifier", "with ngram model", "length", "random"):
        assert f"MT-Bench.held-out.{router}" in figures
    assert figures["MT-Bench.gain_half_width"] >= 0


def test_mt_bench_score_outside_one_to_ten_names_the_row(bench: Any, tmp_path: Path) -> None:
    (tmp_path / bench.MT_BENCH_SCORES).write_text(
        f"question_id,{STRONG},{bench.MT_BENCH_WEAK}\n81,10,11\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"row 0: score 11\.0"):
        bench.load_mt_bench_outcomes(tmp_path, bench.mt_bench_dir())
    assert bench.load_mt_bench_outcomes(tmp_path / "absent", bench.mt_bench_dir()) == []


def test_humaneval_outcomes_pair_each_problem_with_both_verdicts(bench: Any) -> None:
    items = bench.load_humaneval(bench.coding_dir())
    assert len(items) == 164
    assert sum(it.weak for it in items) == 113 and sum(it.strong for it in items) == 146
    assert sum(it.strong and not it.weak for it in items) == 37
    assert all("def " in it.prompt for it in items)


def test_humaneval_outcome_for_an_unknown_problem_names_the_row(bench: Any, tmp_path: Path) -> None:
    (tmp_path / bench.MAPCODER_DIR).mkdir()
    (tmp_path / bench.HUMANEVAL_DIR).mkdir()
    (tmp_path / bench.HUMANEVAL_DIR / "problems.jsonl").write_text(
        json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n"}) + "\n", encoding="utf-8"
    )
    (tmp_path / bench.MAPCODER_DIR / "humaneval_outcomes.csv").write_text(
        "task_id,weak_solved,strong_solved\nHumanEval/0,True,True\nHumanEval/9,False,True\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"row 1: HumanEval/9 is not a HumanEval problem"):
        bench.load_humaneval(tmp_path)
    assert bench.load_humaneval(tmp_path / "absent") == []


def test_third_party_coding_in_prose_goes_to_standard_or_premium(bench: Any) -> None:
    # MBPP's 397 one-sentence tasks ("Write a python function to ..."), written by others and
    # never tuned on: the bar for coding asked in prose is 80 %.
    requests = bench.load_mbpp_requests(bench.coding_dir())
    assert len(requests) == 397
    _, figures = bench.task_type_report(requests, "mbpp")
    assert figures["mbpp.coding in prose (MBPP).economy"] <= 0.2
