"""`rescore validate` checks a models file's backend and loader options against their options models."""

from __future__ import annotations

from pathlib import Path

from tests.support import cli


def test_validate_names_a_bad_backend_or_loader_option_and_the_valid_ones(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {name: a, path: /nowhere, backend: hf, options: {share_prefx: true}}\n"
        "  - {name: b, path: /nowhere, backend: fake, options: {bogus: 1}}\n"
        "  - {name: c, path: /nowhere, backend: hf, options: {share_prefix: false, revision: main}}\n")
    r = cli("validate", models)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if "models[" in x]
    assert len(lines) == 2, lines
    assert "models[0]" in lines[0] and "unknown option 'share_prefx'" in lines[0]
    assert "valid: attn_implementation, online, revision, share_prefix" in lines[0]  # backend's and loader's
    assert "models[1]" in lines[1] and "unknown option 'bogus'" in lines[1] and "p_correct" in lines[1]
    assert "Traceback" not in r.stderr


def test_validate_accepts_good_options_without_the_checkpoint(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: c, path: /nowhere, backend: hf, options: {share_prefix: false}}\n")
    r = cli("validate", models)
    assert r.returncode == 0, r.stdout + r.stderr
