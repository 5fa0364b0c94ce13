"""Saving into a directory that already holds things: only the model's own files change (the files this save writes
and the stale weights / code of a previous save there), the working directory and symbolic links stay, and 50
random directory trees with model-like names come out byte-identical except for the model."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from conftest import compact_model, make_inputs, make_model, model_output
from helpers import UNIFORM, max_diff

import hf_l0
from hf_l0 import L0Config

TOL = 1e-5
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed): ("dir",), ("link", target) or ("file", bytes)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("dir",)
            else:
                found[key] = ("file", path.read_bytes())
    return found


def assert_loads_as(directory: Path, model) -> None:
    inputs = make_inputs()
    loaded = hf_l0.from_pretrained(directory)
    assert max_diff(model_output(loaded, inputs), model_output(model, inputs), inputs) <= TOL


@pytest.fixture(scope="module")
def remote_gpt2():
    return compact_model("gpt2", "AutoModelForCausalLM")  # hidden pruning: remote code


def test_saving_into_a_directory_keeps_every_path_that_is_not_the_models(tmp_path, remote_gpt2):
    target = tmp_path / "d"
    (target / "model-runs" / "run1").mkdir(parents=True)
    (target / "model-runs" / "run1" / "log.txt").write_text("epoch 1\n")
    (target / "model-notes.md").write_text("# notes\n")
    (target / "pytorch_model_eval.py").write_text("print('eval')\n")
    (target / "hf_l0_notes.py").write_text("# mine\n")  # hf_l0_ prefix, but no save's config names it
    (target / "model-00001-of-00002.safetensors").write_bytes(b"not listed by any index")
    before = snapshot(target)
    hf_l0.save_pretrained(remote_gpt2, target)
    remote_gpt2.save_pretrained(target)  # the compact model's own method: the same path
    after = snapshot(target)
    assert {key: after.get(key) for key in before} == before
    assert_loads_as(target, remote_gpt2)


def test_a_new_save_removes_only_the_previous_saves_weights_and_code(tmp_path, remote_gpt2):
    target = tmp_path / "d"
    hf_l0.save_pretrained(remote_gpt2, target, max_shard_size="20KB")
    previous = {p.name for p in target.iterdir()}
    shards = set(json.loads((target / WEIGHTS[1]).read_text())["weight_map"].values())
    code = {name for name in previous if name.endswith(".py")}
    assert len(shards) > 1 and "modeling_hf_l0.py" in code
    (target / "hf_l0_notes.py").write_text("# mine\n")
    native = compact_model("llama", "AutoModelForCausalLM", L0Config(**UNIFORM))
    assert hf_l0.export_plan(native).native
    hf_l0.save_pretrained(native, target, model_card=False)
    names = {p.name for p in target.iterdir()}
    assert not (shards | code | {WEIGHTS[1]}) & names  # stale shards, index and remote code went
    assert {"README.md", "l0_structure.png", "hf_l0_notes.py", "model.safetensors"} <= names  # not this save's
    assert_loads_as(target, native)


def test_saving_into_the_working_directory_keeps_it(tmp_path, monkeypatch, remote_gpt2):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model-notes.md").write_text("keep\n")
    hf_l0.save_pretrained(remote_gpt2, ".")
    hf_l0.save_pretrained(remote_gpt2, ".")
    assert os.getcwd() == str(tmp_path) and (tmp_path / "model-notes.md").read_text() == "keep\n"
    assert_loads_as(tmp_path, remote_gpt2)


def test_trainer_save_model_into_the_working_directory(tmp_path, monkeypatch):
    from hf_l0.training.trainer import L0Trainer, L0TrainingArguments

    monkeypatch.chdir(tmp_path)
    args = L0TrainingArguments(output_dir=".", target_sparsity=0.3, report_to=[], use_cpu=True, save_strategy="no")
    trainer = L0Trainer(model=make_model("gpt2"), args=args)
    trainer.save_model()
    trainer.save_model()  # a second save into the same directory, as a script's final save does
    assert os.getcwd() == str(tmp_path) and (tmp_path / "l0_config.json").is_file()
    assert_loads_as(tmp_path, trainer.compact_model())


def test_saving_through_a_symlink_keeps_the_link_and_the_files_behind_it(tmp_path, remote_gpt2):
    real = tmp_path / "real"
    real.mkdir()
    (real / "mine.txt").write_text("mine\n")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    hf_l0.save_pretrained(remote_gpt2, link)
    hf_l0.save_pretrained(remote_gpt2, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "mine.txt").read_text() == "mine\n" and (real / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing left beside them
    assert not [p for p in real.iterdir() if p.name.startswith(".hf_l0")]
    assert_loads_as(link, remote_gpt2)


def test_a_directory_in_the_place_of_a_written_file_is_refused_before_anything_changes(tmp_path, remote_gpt2):
    target = tmp_path / "d"
    hf_l0.save_pretrained(remote_gpt2, target)
    (target / "README.md").unlink()
    (target / "README.md").mkdir()
    before = snapshot(target)
    with pytest.raises(
        IsADirectoryError,
        match=r"README\.md is a directory, but this save writes a file of that name there: rename or move the "
        r"directory, or save into another directory\.$",
    ):
        hf_l0.save_pretrained(compact_model("gpt2", "AutoModelForCausalLM", seed=1), target)
    assert snapshot(target) == before
    assert_loads_as(target, remote_gpt2)


# -- fuzz: random trees a user might save into -----------------------------------------------------------------------

FILE_NAMES = [
    "model-notes.md",
    "pytorch_model_eval.py",
    "model.safetensors.bak",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "tf_model.h5",
    "flax_model.msgpack",
    "pytorch_model.bin",
    "hf_l0_notes.py",
    "modeling_custom.py",
    "modeling_hf_l0.py.orig",
    "model-card.txt",
    "config.json.orig",
    ".gitattributes",
    "trainer_state.json",
    "l0_config.json",
    "model.safetensors.index.json.bak",
    "README.txt",
]
DIR_NAMES = [
    "model-runs",
    "pytorch_model",
    "checkpoint-5",
    "hf_l0_cache",
    "model.safetensors.d",
    "modeling",
    "tf_model",
]


def _random_tree(rng: random.Random, root: Path, outside: Path, written: list[str], depth: int = 0) -> None:
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(["file", "file", "dir", "link"] if depth < 2 else ["file", "link"])
        if kind == "dir":
            name = rng.choice(DIR_NAMES)
            if not os.path.lexists(root / name):
                (root / name).mkdir()
                _random_tree(rng, root / name, outside, written, depth + 1)
            continue
        # now and then a name this save writes (at the top): that path is the model's and gets replaced
        pool = FILE_NAMES + DIR_NAMES + (written if depth == 0 else [])
        name = rng.choice(pool)
        if os.path.lexists(root / name):
            continue
        if kind == "file":
            (root / name).write_bytes(rng.randbytes(rng.randint(0, 64)))
            continue
        choices = [str(outside / "outside.txt"), str(outside), "missing-target", *(p.name for p in root.iterdir())]
        (root / name).symlink_to(rng.choice(choices))


@pytest.mark.parametrize("chunk", range(5))
def test_fuzz_saving_into_random_trees_changes_only_the_model(tmp_path, chunk, remote_gpt2):
    models = {
        "remote": remote_gpt2,
        "native": compact_model("llama", "AutoModelForCausalLM", L0Config(**UNIFORM)),
        "dense": make_model("gpt2"),
    }
    options = [{}, {"max_shard_size": "20KB"}, {"model_card": False}]
    reference: dict[tuple, list[str]] = {}

    def files_of(kind: str, option: int) -> list[str]:
        """What a save of this model with these options writes, seen in an empty directory."""
        if (kind, option) not in reference:
            out = hf_l0.save_pretrained(models[kind], tmp_path / f"ref-{kind}-{option}", **options[option])
            reference[kind, option] = sorted(p.name for p in out.iterdir())
        return reference[kind, option]

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.txt").write_text("outside\n")
    for trial in range(10):  # 5 chunks x 10: 50 trees
        rng = random.Random(1000 * chunk + trial)
        target = tmp_path / f"t{trial}"
        target.mkdir()
        previous: list[str] = []
        if rng.random() < 0.5:  # a previous save of some model there
            kind, option = rng.choice(list(models)), rng.randrange(len(options))
            previous = files_of(kind, option)
            for name in previous:
                shutil.copy2(tmp_path / f"ref-{kind}-{option}" / name, target / name)
        kind, option = rng.choice(list(models)), rng.randrange(len(options))
        written = files_of(kind, option)
        _random_tree(rng, target, outside, written)
        before, outside_before = snapshot(target), snapshot(outside)
        hf_l0.save_pretrained(models[kind], target, **options[option])
        after = snapshot(target)
        stale = {name for name in previous if name.endswith((".safetensors", ".py")) or name in WEIGHTS} - set(written)
        for path, entry in before.items():
            top = path.split(os.sep)[0]
            if top in written and path == top:
                continue  # replaced by this save
            if path in stale and not entry[0] == "dir":
                assert path not in after, (trial, path)
                continue
            assert after.get(path) == entry, (trial, path)
        assert all((target / name).is_file() and not (target / name).is_symlink() for name in written)
        assert set(after) - set(before) <= set(written), trial
        assert snapshot(outside) == outside_before
        assert_loads_as(target, models[kind])


def test_a_shard_listed_by_the_previous_index_goes_only_when_it_is_a_plain_safetensors_name(tmp_path, remote_gpt2):
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    (target / "sub").mkdir()
    (target / "sub" / "w.safetensors").write_bytes(b"x")
    (target / "old.safetensors").write_bytes(b"x")
    # a backslash is a plain character of a POSIX name (a separator on Windows); a dot name is hidden
    own = ["notes.txt", "sub/w.safetensors", "a\\w.safetensors", ".hidden.safetensors"]
    for name in own[2:]:
        (target / name).write_bytes(b"x")
    weight_map = {"c": "../outside.safetensors", "d": "old.safetensors", **{str(i): name for i, name in enumerate(own)}}
    (target / WEIGHTS[1]).write_text(json.dumps({"weight_map": weight_map}))
    hf_l0.save_pretrained(remote_gpt2, target)
    names = {str(p.relative_to(target)) for p in target.rglob("*")}
    assert set(own) <= names and not {"old.safetensors", WEIGHTS[1]} & names
    assert_loads_as(target, remote_gpt2)


# -- kill -9 at every step of the swap ------------------------------------------------------------------------------

CRASH_SCRIPT = Path(__file__).resolve().parents[1] / "crash_save.py"


def _visible(snap: dict[str, tuple]) -> dict[str, tuple]:
    return {path: entry for path, entry in snap.items() if not path.startswith(".hf_l0-")}


@pytest.mark.slow
def test_kill_9_at_every_step_of_the_swap_leaves_the_old_or_the_new_model(tmp_path):
    import subprocess
    import sys

    import transformers as tf

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(hf_l0.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(CRASH_SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    inputs = make_inputs()
    for scenario in ("single-to-sharded", "sharded-to-dense"):
        root = tmp_path / scenario
        steps = json.loads((root / "steps.json").read_text())
        commit = steps.index("committed")
        assert steps[0] == "staging" and steps[-1] == "done" and commit > 0
        assert any(step.startswith("remove") for step in steps)  # stale files of the old save go in both
        old, new = (model_output(hf_l0.from_pretrained(root / name), inputs) for name in ("old", "new"))
        base, new_files = snapshot(root / "base"), snapshot(root / "new")
        user = {path: entry for path, entry in base.items() if path not in snapshot(root / "old")}
        for k, step in enumerate(steps):
            crashed = root / f"crash-{k}"
            if k < commit:  # not committed: the directory is exactly the old save (a staging leftover aside)
                assert _visible(snapshot(crashed)) == base, (scenario, step)
            output = model_output(hf_l0.from_pretrained(crashed), inputs)  # finishes a committed save
            assert max_diff(output, old if k < commit else new, inputs) <= TOL, (scenario, step)
            after = snapshot(crashed)
            if k >= commit:
                assert not [path for path in after if path.startswith(".hf_l0-")], (scenario, step)
                assert {path: after.get(path) for path in new_files} == new_files, (scenario, step)
            assert {path: after.get(path) for path in user} == user, (scenario, step)
            hf_l0.save_pretrained(hf_l0.from_pretrained(root / "new"), crashed, model_card=False)
            assert not [path for path in snapshot(crashed) if path.startswith(".hf_l0-")], (scenario, step)
        # the stock remote-code loader reads a finished crash directory like the reference save
        middle = root / f"crash-{commit + 1}"
        if scenario == "single-to-sharded":
            loaded = tf.AutoModelForCausalLM.from_pretrained(middle, trust_remote_code=True)
            assert max_diff(model_output(loaded, inputs), new, inputs) <= TOL


# -- which files of a previous save are its remote code ---------------------------------------------------------------

COMPACT = {"model_type": "hf_l0_llama", "l0_structure": {"layers": []}}
REMOTE_CODE_CASES = [
    # (id, config.json text or object, files in the directory, the remote-code files of the previous save)
    (
        "hf-l0 save",
        {**COMPACT, "auto_map": {"AutoModel": "modeling_hf_l0.M"}},
        ["modeling_hf_l0.py"],
        ["modeling_hf_l0.py"],
    ),
    (
        "model_type alone says hf-l0",
        {"model_type": "hf_l0_llama", "auto_map": {"AutoModel": "m.M"}},
        ["m.py"],
        ["m.py"],
    ),
    (
        "structure alone says hf-l0",
        {"model_type": "llama", "l0_structure": {}, "auto_map": {"AutoModel": "m.M"}},
        ["m.py"],
        ["m.py"],
    ),
    ("the user's own remote code", {"model_type": "llama", "auto_map": {"AutoModel": "custom.M"}}, ["custom.py"], []),
    ("no model_type", {"auto_map": {"AutoModel": "custom.M"}}, ["custom.py"], []),
    ("not an object", [1, 2], ["m.py"], []),
    ("not JSON", "{", ["m.py"], []),
    (
        "a list with a tokenizer pair",
        {**COMPACT, "auto_map": {"AutoTokenizer": ["tok.T", None]}},
        ["tok.py"],
        ["tok.py"],
    ),
    (
        "one module named twice",
        {**COMPACT, "auto_map": {"AutoModel": "m.A", "AutoModelForCausalLM": "m.B"}},
        ["m.py"],
        ["m.py"],
    ),
    ("missing file", {**COMPACT, "auto_map": {"AutoModel": "gone.M"}}, [], []),
    ("not a module name", {**COMPACT, "auto_map": {"AutoModel": "bad-name.M"}}, ["bad-name.py"], []),
    ("capitals", {**COMPACT, "auto_map": {"AutoModel": "Modeling_X.M"}}, ["Modeling_X.py"], ["Modeling_X.py"]),
    ("another repository's code", {**COMPACT, "auto_map": {"AutoModel": "other/repo--m.M"}}, ["m.py"], []),
    ("a dotted path", {**COMPACT, "auto_map": {"AutoModel": "pkg.m.M"}}, ["pkg.py"], []),
]


@pytest.mark.parametrize(
    "config, files, expected", [c[1:] for c in REMOTE_CODE_CASES], ids=[c[0] for c in REMOTE_CODE_CASES]
)
def test_the_remote_code_of_a_previous_save_is_only_hf_l0s(tmp_path, config, files, expected):
    (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for name in files:
        (tmp_path / name).write_text("x = 1\n")
    assert sorted(hf_l0.hub.save._remote_code_of(tmp_path)) == sorted(expected)


def test_the_remote_code_follows_relative_imports_past_an_unreadable_module(tmp_path):
    auto_map = {"AutoModel": "modeling_a.M", "AutoConfig": "broken.C"}  # broken.py is read first (last in, first out)
    (tmp_path / "config.json").write_text(json.dumps({**COMPACT, "auto_map": auto_map}))
    (tmp_path / "modeling_a.py").write_text("from .helper_b import f\nimport .helper_c\nfrom .pkg_d.inner import g\n")
    (tmp_path / "pkg_d.py").write_text("")
    (tmp_path / "helper_b.py").write_text("from .modeling_a import M  # a cycle\n")
    (tmp_path / "helper_c.py").write_text("")
    (tmp_path / "broken.py").write_bytes(b"\xff\xfe\x00 not utf-8")
    (tmp_path / "unrelated.py").write_text("")
    found = hf_l0.hub.save._remote_code_of(tmp_path)
    assert sorted(found) == ["broken.py", "helper_b.py", "helper_c.py", "modeling_a.py", "pkg_d.py"]


def test_the_staging_lock_is_exclusive_and_released(tmp_path):
    from hf_l0.hub.save import _lock, _unlock

    first = _lock(tmp_path)
    assert isinstance(first, int)
    assert _lock(tmp_path) is None  # held: a second lock (another save, or the finisher) does not get it
    _unlock(first)
    _unlock(None)  # where locks are unsupported
    again = _lock(tmp_path)
    assert isinstance(again, int)  # released
    _unlock(again)


# -- the swap of atomic_directory, step by step --------------------------------------------------------------------


def test_the_swap_moves_other_files_then_weights_and_code_then_config_then_removes_the_stale(tmp_path):
    from hf_l0.hub.save import _swap_steps

    old = {"model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-1.safetensors"}})}
    old |= {"model-1.safetensors": "x", "modeling_hf_l0.py": "", "mine.txt": "x"}
    old["config.json"] = json.dumps({**COMPACT, "auto_map": {"AutoModel": "modeling_hf_l0.M"}})
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    written = ["README.md", "model.safetensors", "config.json", "hf_l0_x.py", "sub/notes.md", "weights.safetensors"]
    assert _swap_steps(tmp_path, written) == [
        ["move", "README.md"],
        ["move", "sub/notes.md"],
        ["move", "hf_l0_x.py"],
        ["move", "weights.safetensors"],
        ["move", "model.safetensors"],
        ["remove", "model.safetensors.index.json"],  # loaders would prefer the old index's shards
        ["move", "config.json"],
        ["remove", "model-1.safetensors"],
        ["remove", "modeling_hf_l0.py"],
    ]
    # sharded now, over a single file: the old file goes with the switch; no config written, none moved
    (tmp_path / "model.safetensors").write_text("x")
    (tmp_path / "model.safetensors.index.json").unlink()
    assert _swap_steps(tmp_path, ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]) == [
        ["move", "model-00001-of-00001.safetensors"],
        ["move", "model.safetensors.index.json"],
        ["remove", "model.safetensors"],
        ["remove", "modeling_hf_l0.py"],
    ]


def test_a_save_names_its_steps_in_order_and_writes_into_new_subdirectories(tmp_path, monkeypatch):
    from hf_l0.hub import save

    steps: list[str] = []
    own: dict[str, list[str]] = {}  # the save's own directories in the target at a step

    def hook(step: str) -> None:
        steps.append(step)
        if step in ("staging", "committed"):
            own[step] = [n for n in os.listdir(tmp_path) if n.startswith(".hf_l0-")]
            assert save._lock(tmp_path / own[step][0]) is None  # held by the save, at both points
        if step == "committed":
            assert re.fullmatch(re.escape(save.COMMIT_PREFIX) + "[A-Za-z0-9_]+", own[step][0])  # what a finisher finds

    monkeypatch.setattr(save, "_step_hook", hook)
    open_files = len(os.listdir("/proc/self/fd"))
    (tmp_path / "old.safetensors").write_text("x")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "old.safetensors"}}))
    with save.atomic_directory(tmp_path) as staging:
        (staging / "deep" / "er").mkdir(parents=True)
        (staging / "deep" / "er" / "file.txt").write_text("new")
        (staging / "model.safetensors").write_text("w")
    assert steps == [
        "staging",
        "staged",
        "manifest written",
        "committed",
        "move deep/er/file.txt",
        "move model.safetensors",
        "remove model.safetensors.index.json",
        "remove old.safetensors",
        "manifest removed",
        "done",
    ]
    assert len(own["staging"]) == 1 and own["staging"][0].startswith(save.STAGING_PREFIX)  # inside the target
    assert len(os.listdir("/proc/self/fd")) == open_files  # the lock was released
    assert (tmp_path / "deep" / "er" / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "model.safetensors"]
    with save.atomic_directory(tmp_path) as staging:  # into the subdirectories that now exist
        (staging / "deep" / "er").mkdir(parents=True)
        (staging / "deep" / "er" / "file.txt").write_text("newer")
    assert (tmp_path / "deep" / "er" / "file.txt").read_text() == "newer"


def test_a_replayed_swap_skips_what_is_done(tmp_path):
    from hf_l0.hub.save import MANIFEST_NAME, _replay

    commit = tmp_path / ".hf_l0-commit-x"
    commit.mkdir()
    (tmp_path / "moved.txt").write_text("new")  # moved before the crash: its source is gone
    (commit / "pending.txt").write_text("pending")
    (tmp_path / "pending.txt").write_text("old")
    steps = [["move", "moved.txt"], ["move", "pending.txt"], ["remove", "gone.txt"]]
    (commit / MANIFEST_NAME).write_text(json.dumps({"steps": steps}))
    _replay(tmp_path, commit)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"moved.txt": "new", "pending.txt": "pending"}


def test_the_finisher_replays_committed_saves_removes_uncommitted_ones_and_leaves_the_rest(tmp_path):
    from hf_l0.hub.save import COMMIT_PREFIX, MANIFEST_NAME, STAGING_PREFIX, _lock, _unlock, finish_interrupted_save

    def own(name: str, files: dict[str, str]) -> Path:
        path = tmp_path / name
        for relative, text in files.items():
            (path / relative).parent.mkdir(parents=True, exist_ok=True)
            (path / relative).write_text(text)
        path.mkdir(exist_ok=True)
        return path

    swap = json.dumps({"steps": [["move", "sub/model.safetensors"], ["remove", "old.safetensors"]]})
    (tmp_path / "old.safetensors").write_text("old")
    (tmp_path / "notes.txt").write_text("the user's")
    # sorted first: entries the finisher must pass over without stopping (a name with a hyphen is not one of its own,
    # a link to a user's directory, a save still running in another process)
    own(COMMIT_PREFIX + "-not-ours", {MANIFEST_NAME: swap, "sub/model.safetensors": "x"})
    own("users", {MANIFEST_NAME: swap, "sub/model.safetensors": "x"})
    (tmp_path / (COMMIT_PREFIX + "0link")).symlink_to(tmp_path / "users")
    running = own(COMMIT_PREFIX + "0running", {MANIFEST_NAME: swap, "sub/model.safetensors": "running"})
    (tmp_path / (STAGING_PREFIX + "0file")).write_text("a file, not a save")
    committed = own(COMMIT_PREFIX + "a1", {MANIFEST_NAME: swap, "sub/model.safetensors": "new"})
    own(COMMIT_PREFIX + "c3", {})  # the empty commit directory of a finished save
    own(STAGING_PREFIX + "b2", {MANIFEST_NAME: swap, "sub/model.safetensors": "uncommitted"})  # not committed
    kept = ("-not-ours", "users", "0link", "0running", "0file")
    untouched = {name: entry for name, entry in snapshot(tmp_path).items() if any(k in name for k in kept)}
    held = _lock(running)
    open_files = len(os.listdir("/proc/self/fd"))
    try:
        assert finish_interrupted_save(tmp_path) == [
            f"finished {COMMIT_PREFIX}a1",
            f"removed {COMMIT_PREFIX}c3",
            f"removed {STAGING_PREFIX}b2",
        ]
        assert len(os.listdir("/proc/self/fd")) == open_files  # every lock it took is released
    finally:
        _unlock(held)
    after = snapshot(tmp_path)
    assert {name: after.get(name) for name in untouched} == untouched
    assert (tmp_path / "sub" / "model.safetensors").read_text() == "new" and not committed.exists()
    assert not (tmp_path / "old.safetensors").exists() and (tmp_path / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf_l0-")) == sorted(
        [COMMIT_PREFIX + "-not-ours", COMMIT_PREFIX + "0link", COMMIT_PREFIX + "0running", STAGING_PREFIX + "0file"]
    )
    # released by its process, the other save's directory is finished on the next call
    assert finish_interrupted_save(tmp_path) == [f"finished {COMMIT_PREFIX}0running"]
    assert (tmp_path / "sub" / "model.safetensors").read_text() == "running"
    assert finish_interrupted_save(tmp_path) == [] and finish_interrupted_save(tmp_path / "missing") == []


def stubborn_rmtree(path, ignore_errors=False, **kwargs):
    """``shutil.rmtree`` where a file inside is held open elsewhere (Windows, a virus scanner): it fails, unless told
    to ignore errors (then it leaves the directory)."""
    if not ignore_errors:
        raise PermissionError(13, "held open by another program", str(path))


def test_a_save_whose_leftover_cannot_be_removed_still_succeeds_or_raises_its_own_error(tmp_path, monkeypatch):
    from hf_l0.hub.save import COMMIT_PREFIX, STAGING_PREFIX, atomic_directory, finish_interrupted_save

    done, failed = tmp_path / "done", tmp_path / "failed"
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", stubborn_rmtree)
        with atomic_directory(done) as staging:  # committed and replayed: its emptied commit directory stays
            (staging / "model.safetensors").write_text("new")
        with pytest.raises(KeyError, match="the caller's own error"):  # not the cleanup's PermissionError
            with atomic_directory(failed) as staging:
                (staging / "model.safetensors").write_text("never committed")
                raise KeyError("the caller's own error")
    assert (done / "model.safetensors").read_text() == "new" and not (failed / "model.safetensors").exists()
    for directory, prefix in ((done, COMMIT_PREFIX), (failed, STAGING_PREFIX)):
        [leftover] = [p.name for p in directory.iterdir() if p.name.startswith(".hf_l0-")]
        assert leftover.startswith(prefix)
        assert finish_interrupted_save(directory) == [f"removed {leftover}"]  # the next save's cleanup
    assert [p.name for p in done.iterdir()] == ["model.safetensors"] and not list(failed.iterdir())


def test_a_save_under_a_file_or_into_a_dangling_link_is_refused_by_name(tmp_path):
    from hf_l0.hub.save import atomic_directory

    (tmp_path / "sub").write_text("a file of the user's")
    with pytest.raises(NotADirectoryError, match=rf"^{tmp_path / 'sub'} is not a directory, but this save writes "):
        with atomic_directory(tmp_path) as staging:
            (staging / "sub").mkdir()
            (staging / "sub" / "x.json").write_text("{}")
    assert (tmp_path / "sub").read_text() == "a file of the user's"
    with pytest.raises(NotADirectoryError, match=rf"^{tmp_path / 'sub'} exists and is not a directory\.$"):
        with atomic_directory(tmp_path / "sub"):
            pass
    with atomic_directory(tmp_path / "new" / "nested") as staging:  # missing parents are made
        (staging / "x.json").write_text("{}")
    assert (tmp_path / "new" / "nested" / "x.json").is_file()
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'link'} is a symbolic link to a missing directory "):
        with atomic_directory(tmp_path / "link"):
            pass
    with pytest.raises(FileNotFoundError, match=rf"\({tmp_path / 'missing'}\)\.$"):
        with atomic_directory(tmp_path / "link"):
            pass
