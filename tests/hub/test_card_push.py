"""The model card (README.md with Hub metadata, structure heatmap) and push_to_hub through transformers'
PushToHubMixin."""

import json
import re
from urllib.parse import urlparse

import pytest
import torch
from conftest import compact_model, tiny_tokenizer
from helpers import UNIFORM, RecordingHubApi, use_hub_api

import hf_l0
from hf_l0 import L0Config

# -- model card and push_to_hub --------------------------------------------------------------------------------------


def test_model_card(tmp_path):
    model = compact_model("llama", "AutoModelForCausalLM")
    out = hf_l0.save_pretrained(
        model,
        tmp_path / "m",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        metrics={"perplexity": 12.5},
        speedup=1.8,
        repo_id="me/tiny-l0",
    )
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in header
    assert "library_name: transformers" in header and "pipeline_tag: text-generation" in header
    assert "- pruning" in header and "- l0-regularization" in header
    export = json.loads((out / "config.json").read_text())["l0_export"]
    assert f"| before pruning | {export['dense_parameters']:,} |" in card
    assert f"| after pruning | {sum(p.numel() for p in model.parameters()):,} |" in card
    assert "sparsity" in card and "![kept structure per layer](l0_structure.png)" in card
    for i, layer in enumerate(model.config.l0_structure["layers"]):
        assert (
            f"| {i} | {layer['attention_heads']}/6 | {layer['key_value_heads']}/2 | "
            f"{layer['intermediate_size']}/37 |" in card
        )
    assert "| perplexity | 12.5 |" in card and "1.80x" in card
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-l0", trust_remote_code=True)' in card
    assert 'hf_l0.from_pretrained("me/tiny-l0")' in card
    assert (out / "l0_structure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    native = compact_model("llama", "AutoModelForCausalLM", L0Config(**UNIFORM))
    card = (hf_l0.save_pretrained(native, tmp_path / "n", repo_id="me/native") / "README.md").read_text()
    assert 'AutoModelForCausalLM.from_pretrained("me/native")  # a stock config' in card
    assert "trust_remote_code" not in card


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    calls = use_hub_api(monkeypatch, RecordingHubApi()).calls
    model = compact_model("gpt2", "AutoModelForCausalLM")
    assert hf_l0.push_to_hub(model, "me/gpt2-l0", private=True, metrics={"loss": 3.2}) == "commit-url"
    assert calls["create_repo"] == ("me/gpt2-l0", {"private": True, "token": None, "exist_ok": True})
    assert {
        "config.json",
        "model.safetensors",
        "modeling_hf_l0.py",
        "README.md",
        "l0_structure.png",
        "generation_config.json",
    } <= set(calls["files"])
    card = calls["files"]["README.md"].decode()
    assert 'from_pretrained("me/gpt2-l0", trust_remote_code=True)' in card and "| loss | 3.2 |" in card
    assert json.loads(calls["files"]["config.json"])["auto_map"]["AutoModelForCausalLM"].endswith("L0GPT2LMHeadModel")


def test_model_card_links_the_project_only_to_a_declared_url(monkeypatch):
    model = compact_model("gpt2", "AutoModelForCausalLM")
    card = hf_l0.hub.model_card(model, base_model="openai-community/gpt2")
    for url in re.findall(r"\]\((https?://[^)\s]*)\)", card):
        assert urlparse(url).path.strip("/"), f"placeholder link {url}"  # never a bare https://github.com/
    url = hf_l0.hub.card.project_url()  # [project.urls] of pyproject.toml, through the installed metadata
    assert ("made with [hf-l0](" + url + ")" if url else "made with hf-l0 — ") in card
    monkeypatch.setattr(hf_l0.hub.card, "project_url", lambda: "https://example.org/hf-l0")
    assert "made with [hf-l0](https://example.org/hf-l0) — " in hf_l0.hub.model_card(model)


# -- save and push arguments: work end to end or are refused -----------------------------------------------------------


STATE_DICT_REFUSED = (
    r"state_dict does not match the model's tensors \(names and shapes\), e\.g\. \['[^']*', '[^']*', '[^']*'\]: the "
    r"saved config would describe other weights\. Pass the model's own state dict or none\."  # the first three
)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (
            {"variant": "v1"},
            ValueError,
            re.escape(
                "variant='v1': hf-l0 writes and loads model.safetensors only (hf_l0.from_pretrained and the "
                "remote-code classes read no variant files). Save the variant into a directory of its own, or push it "
                "to a branch of the repository with revision=."
            ),
        ),
        (
            {"distributed_checkpoint": True},
            ValueError,
            re.escape(
                "distributed_checkpoint=True writes a torch.distributed checkpoint, which no hf-l0 loader reads: save "
                "the gathered compact model without it."
            ),
        ),
        (
            {"safe_serialization": False},
            ValueError,
            re.escape("safe_serialization=False: hf-l0 writes safetensors only (it never loads pickled weights)."),
        ),
        (
            {"max_shard_sze": "1KB"},
            TypeError,
            re.escape(
                "save_pretrained got unexpected arguments ['max_shard_sze']: it takes those of hf_l0.save_pretrained "
                "and, of the stock method, max_shard_size, state_dict, token, save_peft_format, save_original_format."
            ),
        ),
        ({"state_dict": {"x": torch.zeros(1)}}, ValueError, STATE_DICT_REFUSED),
        ({"state_dict": {"x": 3}}, ValueError, STATE_DICT_REFUSED),  # not a tensor
    ],
)
def test_save_arguments_no_loader_could_read_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, arguments, error, message
):
    api = use_hub_api(monkeypatch, RecordingHubApi())
    model = compact_model("gpt2", "AutoModelForCausalLM")
    for save in (
        lambda: hf_l0.save_pretrained(model, tmp_path / "a", **arguments),
        lambda: model.save_pretrained(tmp_path / "b", **arguments),  # the stock method's name, routed to hf-l0
        lambda: hf_l0.push_to_hub(model, "me/m", **arguments),
        lambda: model.save_pretrained(tmp_path / "c", push_to_hub=True, repo_id="me/m", **arguments),
    ):
        with pytest.raises(error, match=f"^{message}$"):  # the whole message
            save()
    assert not list(tmp_path.iterdir()) and not api.calls  # nothing written, nothing created or uploaded
    with pytest.raises(
        ValueError,
        match="^"
        + re.escape(
            "push_to_hub=True: upload with model.push_to_hub(repo_id) or hf_l0.push_to_hub(model, repo_id), which "
            "upload exactly what this function writes."
        )
        + "$",
    ):
        hf_l0.save_pretrained(model, tmp_path / "d", push_to_hub=True)


def test_push_arguments_and_tags_reach_the_hub_and_the_card(tmp_path, monkeypatch):
    api = use_hub_api(monkeypatch, RecordingHubApi())
    model = compact_model("gpt2", "AutoModelForCausalLM")
    model.push_to_hub("me/m", tags=["my-tag"], revision="dev", commit_description="why")
    assert '- "my-tag"' in api.calls["files"]["README.md"].decode()
    assert api.calls["commit"][1]["revision"] == "dev" and api.calls["commit"][1]["commit_description"] == "why"
    assert api.calls["branch"] == ("me/m", "dev")
    api.calls.clear()
    model.save_pretrained(
        tmp_path / "m", push_to_hub=True, repo_id="me/m", tags=["other"], revision="v2", commit_description="d"
    )
    assert '- "other"' in api.calls["files"]["README.md"].decode()
    assert api.calls["commit"][1]["revision"] == "v2" and api.calls["commit"][1]["commit_description"] == "d"
    state = hf_l0.from_pretrained(hf_l0.save_pretrained(model, tmp_path / "s", state_dict=model.state_dict()))
    assert state.state_dict().keys() == model.state_dict().keys()


class NormalizingApi(RecordingHubApi):
    """RecordingHubApi whose create_repo answers with the full name (``"me/" + name``), as the Hub does for a bare name,
    and which records every create_branch argument."""

    def create_repo(self, repo_id, **kwargs):
        super().create_repo(repo_id, **kwargs)
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else "me/" + repo_id})()

    def create_branch(self, **kwargs):
        self.calls["branch"] = kwargs


def push_through(entry: str, model, repo_id: str, save_kwargs: dict, **push_kwargs):
    """Push with hf_l0.push_to_hub (save arguments beside the push arguments) or with CompactModelUpload (save
    arguments at construction)."""
    if entry == "function":
        return hf_l0.push_to_hub(model, repo_id, **save_kwargs, **push_kwargs)
    return hf_l0.hub.CompactModelUpload(model, **save_kwargs).push_to_hub(repo_id, **push_kwargs)


@pytest.mark.parametrize("entry", ["function", "upload"])
def test_every_push_argument_reaches_the_hub_and_the_uploaded_folder(monkeypatch, entry):
    api = use_hub_api(monkeypatch, NormalizingApi())
    model = compact_model("gpt2", "AutoModelForCausalLM")
    result = push_through(
        entry,
        model,
        "tiny",
        # hf_l0.push_to_hub takes one tags argument, the push's; CompactModelUpload also takes the save's
        {"metrics": {"loss": 3.2}, **({"tags": ["saved-tag"]} if entry == "upload" else {})},
        commit_message="my message",
        commit_description="my description",
        private=True,
        token="hf_secret",
        revision="dev",
        create_pr=True,
        max_shard_size="20KB",
        tags=["pushed-tag"],
    )
    assert result == "commit-url"
    assert api.calls["create_repo"] == ("tiny", {"private": True, "token": "hf_secret", "exist_ok": True})
    assert api.calls["branch"] == {"repo_id": "me/tiny", "branch": "dev", "token": "hf_secret", "exist_ok": True}
    repo, commit = api.calls["commit"]
    assert repo == "me/tiny"  # the name the Hub answered with, not the one asked for
    assert commit == {
        "commit_message": "my message",
        "commit_description": "my description",
        "token": "hf_secret",
        "create_pr": True,
        "revision": "dev",
    }
    files = api.calls["files"]
    shards = sorted(name for name in files if name.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors" not in shards  # max_shard_size reached the save
    index = json.loads(files["model.safetensors.index.json"])
    assert sorted(set(index["weight_map"].values())) == shards
    card = files["README.md"].decode()
    assert '- "pushed-tag"' in card
    assert ('- "saved-tag"' in card) == (entry == "upload")  # the push's tags join the saved ones
    assert 'from_pretrained("me/tiny", trust_remote_code=True)' in card and "| loss | 3.2 |" in card


@pytest.mark.parametrize("entry", ["function", "upload"])
def test_push_defaults_one_shard_a_default_message_and_the_users_own_repo_id_in_the_card(monkeypatch, entry):
    api = use_hub_api(monkeypatch, NormalizingApi())
    model = compact_model("gpt2", "AutoModelForCausalLM")
    # a repo_id given to the save (CompactModelUpload's) names the card's repository; the push does not replace it
    card_repo = "someone/else" if entry == "upload" else "me/tiny"
    push_through(entry, model, "me/tiny", {"repo_id": card_repo} if entry == "upload" else {})
    assert api.calls["create_repo"] == ("me/tiny", {"private": None, "token": None, "exist_ok": True})
    assert "branch" not in api.calls  # no revision: no branch
    assert api.calls["commit"][1] == {
        "commit_message": "Upload compact model (hf-l0)",
        "commit_description": None,
        "token": None,
        "create_pr": False,
        "revision": None,
    }
    files = api.calls["files"]
    assert "model.safetensors" in files and "model.safetensors.index.json" not in files  # "5GB": one file
    assert f'from_pretrained("{card_repo}", trust_remote_code=True)' in files["README.md"].decode()


@pytest.mark.parametrize("entry", ["function", "upload"])
def test_push_uploads_the_tokenizer_and_accepts_what_trainer_passes(monkeypatch, entry):
    api = use_hub_api(monkeypatch, NormalizingApi())
    model, tokenizer = compact_model("gpt2", "AutoModelForCausalLM"), tiny_tokenizer(False)
    if entry == "function":
        hf_l0.push_to_hub(model, "me/tiny", tokenizer, is_main_process=True)
    else:
        hf_l0.hub.CompactModelUpload(model, tokenizer, is_main_process=True).push_to_hub("me/tiny")
    files = api.calls["files"]
    assert "tokenizer.json" in files and "tokenizer_config.json" in files
    uploaded = json.loads(files["tokenizer.json"])["model"]["vocab"]
    assert uploaded == json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]


def test_compact_model_upload_saves_its_folder_with_the_tokenizer_and_the_shard_size(tmp_path):
    model, tokenizer = compact_model("gpt2", "AutoModelForCausalLM"), tiny_tokenizer(False)
    upload = hf_l0.hub.CompactModelUpload(model, tokenizer, metrics={"loss": 3.2})
    one = upload.save_pretrained(tmp_path / "one")
    assert (one / "model.safetensors").is_file() and (one / "tokenizer.json").is_file()
    assert "| loss | 3.2 |" in (one / "README.md").read_text()  # the arguments given at construction
    sharded = upload.save_pretrained(tmp_path / "sharded", max_shard_size="20KB", metrics={"loss": 1.5})
    assert not (sharded / "model.safetensors").exists() and len(list(sharded.glob("model-*.safetensors"))) > 1
    assert "| loss | 1.5 |" in (sharded / "README.md").read_text()  # a save's own arguments win
    for folder in (one, sharded):
        loaded = hf_l0.from_pretrained(folder)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
