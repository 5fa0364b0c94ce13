"""The README's set-up commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.strip().startswith("pip install torch==2.13.0 && ")]


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "pytest" in tests and "pytest" not in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in [line.strip() for line in ci]


def test_main_job_settings_parse_with_the_script_parser():
    from hf_l0.commands import prune_classification as script

    model_args, data_args, args = script.build_parser().parse_json_file(
        str(ROOT / "scripts" / "configs" / "minilm_rotten_tomatoes.json")
    )
    assert model_args.model_name_or_path == "hf_l0:minilm" and data_args.dataset_name == "hf_l0:rotten_tomatoes"
    assert args.target_sparsity == 0.6 and args.max_steps == 300 and args.seed == 42
    assert not args.disable_tqdm and args.logging_steps > 0  # a progress bar with an ETA, and a log line every N steps
