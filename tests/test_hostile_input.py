"""Names that become paths or keys, and output paths, under hostile input: one rule
(dreamfusion.names, dreamfusion.stages.cli.output_folder) called from every stage and from
``dreamfusion-kfp``; each refusal is one ``error:`` line and exit code 2, before any work, and
nothing is written or changed."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamfusion.errors import UserError
from dreamfusion.names import NAME, SLUG, SLUG_MAX, check_name, slug
from dreamfusion.stages import cli


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_slug_of_any_unicode_is_a_safe_bounded_name(text):
    s = slug(text)
    assert SLUG.fullmatch(s) and len(s) <= SLUG_MAX, s
    assert check_name(s, "slug") == s  # what the rule for given names accepts
    assert s.endswith(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8])
    assert ".." not in s and "/" not in s and "\\" not in s


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.sampled_from(["upper", "lower", "space", "tab", "suffix"]))
def test_prompts_that_differ_only_in_case_or_spacing_get_distinct_slugs(text, how):
    other = {"upper": text.upper(), "lower": text.lower(), "space": text + " ", "tab": text.replace(" ", "\t"),
             "suffix": text + "!"}[how]
    if other != text:
        assert slug(other) != slug(text)


def test_slug_keeps_the_words():
    assert slug("A Red   Cube!").startswith("a-red-cube-")
    assert slug("../../etc/passwd").startswith("etc-passwd-")
    assert SLUG.fullmatch(slug("日本語")) and len(slug("日本語")) == 8  # no ASCII words: the digest alone
    assert len(slug("x" * 300)) == SLUG_MAX


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", "a\\b", "-x", ".hidden", "a b", "a\nb", "a\x00b", "x" * 64, "CON", "nul.txt",
     "COM1", "é", 3, None],
)
def test_check_name_refuses_unsafe_names(name):
    with pytest.raises(UserError, match="^--task ") as e:
        check_name(name, "--task")
    assert "\n" not in str(e.value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_check_name_accepts_exactly_the_safe_names(text):
    safe = bool(NAME.fullmatch(text)) and text.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"} and not (
        text.split(".")[0].upper()[:3] in ("COM", "LPT") and text.split(".")[0][3:] in list("123456789"))
    if safe:
        assert check_name(text, "name") == text
    else:
        with pytest.raises(UserError):
            check_name(text, "name")


def test_output_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli.output_folder(f)
    with pytest.raises(UserError, match="cannot be made: .* is a file"):
        cli.output_folder(f / "sub" / "dir")
    assert cli.output_folder(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()  # checked, not made
    assert f.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder")
def test_output_folder_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="no permission to write"):
            cli.output_folder(ro / "out")
    finally:
        ro.chmod(0o755)


def _stage_main(name):
    import importlib

    return importlib.import_module(f"dreamfusion.stages.{name}").main


@pytest.mark.parametrize(
    "stage, argv, message",
    [
        ("prompt_expansion", ["--output", "{file}", "model.prompt=a red cube"], "is a file, not a folder"),
        ("nerf_sds", ["--output", "{file}"], "is a file, not a folder"),
        ("nerf_sds", ["--output", "{file}/sub"], "cannot be made"),
        ("nerf_sds", ["--output", "{new}", "--task", ".."], "--task '..'"),
        ("nerf_sds", ["--output", "{new}", "--key", "a/b"], "--key 'a/b'"),
        ("nerf_sds", ["--output", "{new}", "--key", "a\\b"], "--key 'a\\\\\\\\b'"),
        ("dmtet_finetune", ["--checkpoint", "{file}", "--output", "{file}"], "is a file, not a folder"),
        ("dmtet_finetune", ["--checkpoint", "{file}", "--output", "{new}", "--task", "x/.."], "--task"),
        ("mesh_export", ["--checkpoint", "{file}", "--output", "{file}"], "is a file, not a folder"),
        ("mesh_export", ["--checkpoint", "{file}", "--output", "{new}", "--name", "a\nb"], "--name 'a\\\\nb'"),
        ("mesh_export", ["--checkpoint", "{file}", "--output", "{new}", "--name", "x" * 300], "--name 'xxx"),
        ("video_render", ["--checkpoint", "{file}", "--output", "{file}"], "is a file, not a folder"),
    ],
)
def test_stages_refuse_bad_paths_and_names_before_any_work(tmp_path, capsys, stage, argv, message):
    f = tmp_path / "file"
    f.write_bytes(b"earlier output")
    values = {"file": str(f), "new": str(tmp_path / "new")}
    rc = cli.run(_stage_main(stage), [a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.replace("\\\\", "\\") in err, err
    assert f.read_bytes() == b"earlier output" and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["submit", "nope"], "invalid choice: 'nope'"),
        (["compile", "--parallelism", "0", "--output", "{new}"], "--parallelism: 0 is outside 1-64"),
        (["compile", "--parallelism", "many", "--output", "{new}"], "'many' is not a whole number"),
        (["compile", "--output", "{file}"], "is a file, not a folder"),
        (["submit", "catalog", "--parallelism", "-3"], "-3 is outside 1-64"),
        ([], "required: cmd"),
        # pipeline parameters checked against the compiled pipeline before any endpoint is contacted
        (["submit", "text_to_3d", "-p", "seed=abc", "--host", "http://127.0.0.1:9"], "seed takes a whole number"),
        (["submit", "text_to_3d", "-p", "nosuch=1", "--host", "http://127.0.0.1:9"], "has no such parameter"),
        (["submit", "regression", "-p", "tolerance=NaN", "--host", "http://127.0.0.1:9"], "takes a finite number"),
        (["submit", "catalog", "-p", "prompts=7", "--host", "http://127.0.0.1:9"], "prompts takes a JSON list"),
        (["schedule", "catalog", "--cron", "0 0 2 * * *", "-p", "dmtet=yes", "--host", "http://127.0.0.1:9"],
         "dmtet takes true or false"),
    ],
)
def test_kfp_cli_mistakes_are_one_line(tmp_path, capsys, argv, message):
    from pipelines.cli import main

    f = tmp_path / "file"
    f.write_text("keep")
    rc = main([a.format(file=f, new=tmp_path / "new") for a in argv])
    out = capsys.readouterr()
    assert rc == 2, out
    assert out.err.startswith("error: ") and out.err.count("\n") == 1 and message in out.err, out.err
    assert "usage:" not in out.err + out.out
    assert f.read_text() == "keep" and not (tmp_path / "new").exists()
