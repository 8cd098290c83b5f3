"""The whole-world evaluation resumes only what the same code and settings made."""

from __future__ import annotations

from dreamfusion.prior.evaluate_world import code_digest


def test_code_digest_follows_the_engine_not_the_evaluation_tables(tmp_path):
    (tmp_path / "prior").mkdir()
    (tmp_path / "geometry").mkdir()
    engine = tmp_path / "geometry" / "nerf.py"
    table = tmp_path / "prior" / "evaluate_world.py"
    engine.write_text("DENSITY = 1\n")
    table.write_text("ROWS = 1\n")
    first = code_digest(tmp_path)
    assert len(first) == 12 and first == code_digest(tmp_path)
    table.write_text("ROWS = 2\n")
    assert code_digest(tmp_path) == first  # the card's code does not change a run
    engine.write_text("DENSITY = 2\n")
    second = code_digest(tmp_path)
    assert second != first
    (tmp_path / "prior" / "score.py").write_text("")  # a new file counts, even an empty one
    assert code_digest(tmp_path) != second
    assert code_digest() != code_digest(tmp_path)  # the package itself by default


def test_overrides_reach_prompt_expansion_as_well_as_nerf_sds(tmp_path):
    """A run under another guidance model (a copy of the shipped prior): prompt-expansion encodes with
    it, so nerf-sds accepts the prompt set (it refuses one encoded for another model)."""
    import shutil

    import torch

    from dreamfusion.prior.evaluate_world import run_one
    from dreamfusion.prior.model import SHAPES_DIR

    model = tmp_path / "prior-copy"
    shutil.copytree(SHAPES_DIR, model, ignore=shutil.ignore_patterns("*.png", "*.md"))
    # run_one sets the process's torch threads (it runs in a worker): keep this process's count
    out = run_one("a red cube", 0, 2, str(tmp_path / "run"), [f"model.guidance.model_key={model}"],
                  threads=torch.get_num_threads())
    assert out["prompt"] == "a red cube" and "nerf" in out and "mesh" in out
