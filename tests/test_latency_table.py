"""How a latency table is measured, keyed, cached and read back (hf_l0/cost/latency.py), without timing anything: the
timer is replaced where a test needs times, so each test checks what is measured, on which model, and how it is
recorded. What the cost model predicts from a table is tested in test_cost.py."""

import hashlib
import io
import json
import os
from types import SimpleNamespace

import pytest
import torch
import transformers
from conftest import CONFIGS, make_model

from hf_l0 import L0Config, patch_model, prune_model
from hf_l0.arch import get_adapter
from hf_l0.cost import latency
from hf_l0.cost.latency import (
    TABLE_FORMAT,
    LatencyTable,
    compact_layers,
    default_grid,
    latency_inputs,
    latency_table,
    measure_latency_table,
)
from hf_l0.pruning.structure_format import STRUCTURE_FORMAT

ATTENTION_UNITS, NEURONS, LAYERS = 4, 37, 3  # the tiny BERT of conftest.make_model


def bert():
    model = make_model("bert", "AutoModelForSequenceClassification")
    assert latency._model_shape(model)["attention_units"] == ATTENTION_UNITS
    return model


def run_calls(monkeypatch, run: bool = True):
    """Replace the timer by one that runs every call once (if ``run``) and records what it was given; returns the
    records."""
    seen = {}

    def fake_time_rounds(calls, repeats, rounds, warmup, progress):
        seen.update(
            calls=dict(calls),
            outputs={name: call() for name, call in calls.items()} if run else {},
            settings=(repeats, rounds, warmup),
            progress=progress,
            threads=torch.get_num_threads(),
        )
        if progress is not None:
            seen["bar"] = (progress.total, progress.desc, progress.unit)
        return {name: 0.001 * (i + 1) for i, name in enumerate(calls)}

    monkeypatch.setattr(latency, "_time_rounds", fake_time_rounds)
    return seen


def closure(call, name):
    """A variable a timed call closes over (the models and inputs it runs)."""
    return dict(zip(call.__code__.co_freevars, (c.cell_contents for c in call.__closure__ or ())))[name]


def test_each_width_is_timed_in_a_model_of_that_width_sharing_the_dense_weights_outside_the_layers(monkeypatch):
    model = bert()
    seen = run_calls(monkeypatch)
    threads = torch.get_num_threads()
    table = measure_latency_table(
        model, batch_size=2, seq_len=16, threads=2, dtype=torch.float64, attention_grid=[2], ffn_grid=[18]
    )
    assert torch.get_num_threads() == threads and seen["threads"] == 2  # timed with the asked threads, then restored
    assert sorted(seen["calls"]) == [
        "attention:0",
        "attention:2",
        "attention:4",
        "dense",
        "empty_layer",
        "ffn:18",
        "ffn:37",
    ]
    dense = closure(seen["calls"]["dense"], "dense")
    inputs = closure(seen["calls"]["dense"], "inputs")
    assert inputs["input_ids"].shape == (2, 16)
    for name, call in seen["calls"].items():
        if ":" not in name:
            continue
        kind, units = name.split(":")
        whole = call.__defaults__[0]
        expected = (int(units), 0) if kind == "attention" else (0, int(units))
        assert compact_layers(whole) == [expected] * LAYERS, name
        assert {p.dtype for p in whole.parameters()} == {torch.float64}
        embedding = whole.bert.embeddings.word_embeddings.weight
        assert embedding is dense.bert.embeddings.word_embeddings.weight  # shared, not copied per width
        if int(units):
            layer = get_adapter(whole).layers()[0]
            assert all(p.data_ptr() != q.data_ptr() for p in layer.parameters() for q in dense.parameters())
        assert isinstance(seen["outputs"][name].logits, torch.Tensor)
    expected = model.double()(**latency_inputs(model, 2, 16)).logits
    assert torch.equal(seen["outputs"]["dense"].logits, expected)  # the dense model, with the model's weights
    empty_layer = closure(seen["calls"]["empty_layer"], "empty")
    linears = [m for m in empty_layer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.numel() == 0 for m in linears)  # no unit left
    assert all(m.bias is None for m in linears if m.in_features == 0)  # nor an output bias
    hidden = closure(seen["calls"]["empty_layer"], "args")[0]
    assert hidden.shape == (2, 16, 32) and hidden.dtype == torch.float64  # what the first layer of a float64 model gets
    assert table.key["dtype"] == "float64"


def test_measure_latency_table_defaults_grids_rounds_and_progress(monkeypatch):
    model = make_model("llama")  # rotary positions: the default 128 tokens fit
    shape = latency._model_shape(model)
    seen = run_calls(monkeypatch, run=False)
    table = measure_latency_table(model)
    assert closure(seen["calls"]["dense"], "inputs")["input_ids"].shape == (1, 128)  # batch 1 x 128 tokens
    assert table.attention_units == default_grid(shape["attention_units"])
    assert table.ffn_units == default_grid(shape["intermediate_size"]) and len(table.ffn_units) > 3
    assert seen["settings"] == (3, 8, 2)  # repeats, rounds, warm-up calls
    assert seen["bar"] == (8 * len(seen["calls"]), "latency table", "config")
    assert seen["threads"] == 1
    assert table.key["dtype"] == "float32"  # the model's own
    measure_latency_table(model, progress=False)
    assert seen["progress"] is None


@pytest.mark.parametrize(
    "kind, grid, message",
    [
        ("attention_grid", [0, 9], "attention grid [0, 4, 9] must lie within [0, 4] (the dense model's width)."),
        ("attention_grid", [-1, 2], "attention grid [-1, 0, 2, 4] must lie within [0, 4] (the dense model's width)."),
        ("ffn_grid", [40, 2], "FFN grid [0, 2, 37, 40] must lie within [0, 37] (the dense model's width)."),
    ],
)
def test_a_grid_outside_the_model_is_refused_before_anything_is_timed(monkeypatch, tmp_path, kind, grid, message):
    seen = run_calls(monkeypatch)
    for build in (measure_latency_table, lambda m, **kw: latency_table(m, cache_dir=tmp_path, progress=False, **kw)):
        with pytest.raises(ValueError) as refused:
            build(bert(), **{kind: grid})
        assert str(refused.value) == message
    assert seen == {}


def test_the_table_key_records_what_the_times_depend_on():
    shape = latency._model_shape(bert())
    machine = {"processor": "elsewhere"}
    key = latency._table_key(shape, 2, 16, 3, torch.bfloat16, [2], [9], 4, 5, "digest", machine)
    assert key == {
        "format": TABLE_FORMAT,
        "shape": shape,
        "batch_size": 2,
        "seq_len": 16,
        "threads": 3,
        "dtype": "bfloat16",
        "torch": torch.__version__,
        "attention_grid": [0, 2, 4],
        "ffn_grid": [0, 9, 37],
        "repeats": 4,
        "rounds": 5,
        "config": "digest",
        "machine": machine,
    }
    assert latency._table_key(shape, 2, 16, 3, torch.float32, None, None, 4, 5)["machine"] == latency.machine_identity()


def test_table_paths_name_the_shape_and_hash_the_whole_key_in_any_order(monkeypatch, tmp_path):
    key = latency._table_key(latency._model_shape(bert()), 2, 16, 3, torch.float32, None, None, 4, 5, "d", {})
    reordered = dict(reversed(list(key.items())))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"BertForSequenceClassification-b2-s16-t3-{digest}.json"
    assert latency.table_path(key, tmp_path) == latency.table_path(reordered, tmp_path) == tmp_path / name
    monkeypatch.setenv("HF_L0_CACHE", str(tmp_path / "cache"))
    assert latency.table_path(key) == tmp_path / "cache" / "latency" / name


def test_latency_table_measures_with_the_given_settings_and_refuses_bad_ones(monkeypatch, tmp_path):
    measured = []
    real = measure_latency_table

    def fake_measure(model, *args, **kwargs):  # records the settings, then measures a short table on a fake timer
        measured.append((model, args, kwargs))
        dtype, attention_grid, ffn_grid = args[3:6]
        return real(model, 1, 8, 1, dtype, attention_grid, ffn_grid, 1, 1, progress=False)

    monkeypatch.setattr(latency, "_time_rounds", lambda calls, *a: dict.fromkeys(calls, 0.001))
    monkeypatch.setattr(latency, "measure_latency_table", fake_measure)
    model = bert()
    table = latency_table(model, cache_dir=tmp_path)
    assert measured == [
        (
            model,
            (1, 128, 1, torch.float32, default_grid(ATTENTION_UNITS), default_grid(NEURONS), 3, 8),
            {"progress": True},
        )
    ]
    key = latency._table_key(
        latency._model_shape(model), 1, 128, 1, torch.float32, None, None, 3, 8, latency.config_digest(model)
    )
    assert table.path == str(latency.table_path(key, tmp_path)) and os.path.isfile(table.path)  # cached by its key
    latency_table(model, 2, 16, 3, torch.float64, tmp_path, [2], [9], 4, 5, progress=False)
    assert measured[-1] == (model, (2, 16, 3, torch.float64, [0, 2, 4], [0, 9, 37], 4, 5), {"progress": False})
    for name in ("batch_size", "seq_len", "threads", "repeats", "rounds"):
        for bad in (0, 2.0):
            with pytest.raises(ValueError) as refused:
                latency_table(model, cache_dir=tmp_path, **{name: bad})
            assert str(refused.value) == f"{name}={bad!r} must be a positive int."
    assert len(measured) == 2


def test_machine_identity_reads_the_processor_name_and_the_usable_cpus(monkeypatch):
    cpuinfo = "processor\t: 0\nmodel name\t: Test CPU @ 2.00GHz: rev 3\nflags\t: fpu\n"
    opened = []

    def fake_open(path, *args, **kwargs):
        opened.append(path)
        if path != "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(latency, "open", fake_open, raising=False)
    monkeypatch.setattr(latency.platform, "processor", lambda: "x86_64-fallback")
    monkeypatch.setattr(latency.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(latency.platform, "system", lambda: "Linux")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    expected = {"processor": "Test CPU @ 2.00GHz: rev 3", "cpus": 3, "machine": "x86_64", "system": "Linux"}
    assert latency.machine_identity() == expected
    assert opened == ["/proc/cpuinfo"]
    cpuinfo = "processor\t: 0\n"  # no model name line: the platform's name
    assert latency.machine_identity()["processor"] == "x86_64-fallback"
    monkeypatch.setattr(latency, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError()), raising=False)
    monkeypatch.setattr(latency.platform, "processor", lambda: "")
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # not on every OS: all the CPUs
    assert latency.machine_identity() == {**expected, "processor": "", "cpus": 64}


def test_latency_inputs_are_fixed_token_ids_with_a_full_mask_and_no_cache():
    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    inputs = latency_inputs(model(vocab_size=50, use_cache=True), 2, 7)
    expected = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    assert inputs.keys() == {"input_ids", "attention_mask", "use_cache"}
    assert torch.equal(inputs["input_ids"], expected) and inputs["use_cache"] is False
    assert torch.equal(inputs["attention_mask"], torch.ones(2, 7, dtype=torch.long))
    tiny = latency_inputs(model(vocab_size=3, use_cache=False), 1, 64)["input_ids"]
    assert torch.equal(tiny, torch.randint(2, 3, (1, 64), generator=torch.Generator().manual_seed(0)))
    no_vocab = latency_inputs(model(), 1, 300)
    assert no_vocab.keys() == {"input_ids", "attention_mask"}
    assert torch.equal(
        no_vocab["input_ids"], torch.randint(5, 100, (1, 300), generator=torch.Generator().manual_seed(0))
    )


def test_config_digest_follows_the_attention_implementation_not_the_field_order():
    model = bert()
    digest = latency.config_digest(model)
    assert len(digest) == 16 and int(digest, 16) >= 0
    config = model.config
    config.__dict__["hidden_act"] = config.__dict__.pop("hidden_act")  # the same fields in another order
    assert latency.config_digest(model) == digest
    config._attn_implementation = "sdpa"
    assert latency.config_digest(model) != digest
    config._attn_implementation = "eager"
    config.custom_dtype = torch.float16  # not JSON: written as text
    assert latency.config_digest(model) not in (digest, None)


def test_a_table_saves_atomically_into_new_folders_and_loads_back(monkeypatch, tmp_path):
    def uneven_times(calls, *settings):
        return {name: 0.001 + 1e-5 * i for i, name in enumerate(sorted(calls))}

    monkeypatch.setattr(latency, "_time_rounds", uneven_times)
    table = measure_latency_table(bert(), seq_len=8, attention_grid=[2], ffn_grid=[18], progress=False)
    path = tmp_path / "new" / "folder" / "table.json"
    assert table.save(path) == str(path) and table.path == str(path)
    assert os.listdir(path.parent) == ["table.json"]
    text = path.read_text()
    assert text == json.dumps(table.to_dict(), indent=1)  # readable, one field per line
    loaded = LatencyTable.load(path)
    assert loaded == table and loaded.loaded and loaded.path == str(path)
    data = json.loads(text)
    for stale in ({**data, "format": TABLE_FORMAT - 1}, {k: v for k, v in data.items() if k != "format"}):
        path.write_text(json.dumps(stale))
        with pytest.raises(ValueError) as refused:
            LatencyTable.load(path)
        assert (
            str(refused.value) == f"{path} is not a latency table of format {TABLE_FORMAT}; delete it to measure anew."
        )


def test_fresh_copies_carry_the_weights_in_the_asked_dtype_and_leave_the_model_alone():
    model = bert()
    fresh = latency._fresh(model, torch.float64)
    assert type(fresh) is type(model) and not fresh.training
    own = model.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, own[name].to(value.dtype)), name
        assert value.dtype == (torch.float64 if own[name].is_floating_point() else own[name].dtype)
    one = latency._fresh(model, torch.float32, num_layers=1)
    assert get_adapter(one).num_layers == 1 and model.config.num_hidden_layers == LAYERS
    assert torch.equal(one.bert.encoder.layer[0].output.dense.weight, model.bert.encoder.layer[0].output.dense.weight)


def test_model_shape_reads_the_dense_model_and_refuses_a_pruned_one():
    model = make_model("llama")
    assert latency._model_shape(model) == {
        "class": type(model).__name__,
        "model_type": "llama",
        "hidden_size": model.config.hidden_size,
        "num_layers": model.config.num_hidden_layers,
        "attention_units": model.config.num_key_value_heads,
        "heads_per_unit": model.config.num_attention_heads // model.config.num_key_value_heads,
        "head_dim": model.config.hidden_size // model.config.num_attention_heads,
        "intermediate_size": model.config.intermediate_size,
        "vocab_size": model.config.vocab_size,
        "num_labels": model.config.num_labels,
        "attn_implementation": model.config._attn_implementation,
    }
    config = CONFIGS["bert"]()
    config.num_hidden_layers = 1
    one_layer = transformers.BertForSequenceClassification(config)
    assert latency._model_shape(one_layer)["num_layers"] == 1
    pruned = patch_model(bert(), L0Config())
    with torch.no_grad():
        pruned.l0_gates.heads.log_alpha[:, :1] = -10.0
    pruned = prune_model(pruned.eval())
    with pytest.raises(ValueError) as refused:
        latency._model_shape(pruned)
    assert str(refused.value) == (
        "this model is already pruned: a latency table is measured for the dense model it came from (its shapes are "
        "the grid's upper ends). Pass the dense model."
    )


def test_each_timed_width_keeps_the_output_bias_while_a_unit_is_left():
    shape = latency._model_shape(bert())
    for units, neurons in ((0, 0), (1, 0), (0, 1), (3, 20)):
        structure = latency._structure(shape, 2, units, neurons)
        layer = {
            "attention_heads": units,
            "key_value_heads": units,
            "attention_output_bias": units > 0,
            "intermediate_size": neurons,
            "ffn_output_bias": neurons > 0,
        }
        assert structure == {"format": STRUCTURE_FORMAT, "hidden_size": 32, "head_dim": 8, "layers": [layer, layer]}
        assert structure["layers"][0] is not structure["layers"][1]


def test_timing_rounds_alternate_the_order_and_take_medians(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(latency.time, "perf_counter", lambda: float(next(clock)))
    order, updates = [], []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    medians = latency._time_rounds(calls, 2, 3, 1, SimpleNamespace(update=updates.append))
    assert (
        order
        == ["a", "b", "c"]
        + ["a"] * 2
        + ["b"] * 2
        + ["c"] * 2
        + ["c"] * 2
        + ["b"] * 2
        + ["a"] * 2
        + ["a"] * 2
        + ["b"] * 2
        + ["c"] * 2
    )
    assert updates == [1] * 9
    assert medians == {"a": 1.0, "b": 1.0, "c": 1.0}  # each call spans one tick of the fake clock


def test_interpolation_between_grid_points_is_exact_in_float64_and_its_slope_at_a_point_is_the_next_segments():
    xs, ys = [0, 1, 4, 9], [0.0, 1e-3, 2.5e-3, 7e-3]
    x = 1.1  # not a float32 number: a float32 detour would show
    assert float(torch.tensor(x, dtype=torch.float32)) != x
    expected = ys[1] + (ys[2] - ys[1]) * (x - xs[1]) / (xs[2] - xs[1])
    for value in (x, torch.tensor(x, dtype=torch.float64)):
        assert float(latency._interpolate(value, xs, ys)) == pytest.approx(expected, rel=1e-15, abs=0)
    at_point = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    latency._interpolate(at_point, xs, ys).backward()
    assert float(at_point.grad) == pytest.approx((ys[3] - ys[2]) / (xs[3] - xs[2]), rel=1e-12)
