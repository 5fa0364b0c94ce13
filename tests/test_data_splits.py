"""The Shakespeare splits: a selection split held out from training, with train's start and validation unchanged."""

from __future__ import annotations

import pytest

from hf_l0.demo import data


@pytest.fixture()
def plays(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in (
        "as_you_like_it_gut",
        "hamlet_gut",
        "hamlet_gut_f",
        "tempest_gut",
        "tempest_gut_f",
        "winters_tale_gut",
        "winters_tale_gut_f",
    ):
        (texts / f"{name}.txt").write_text("".join(f"{name} line {i}\n\n" for i in range(3)))
    return tmp_path


def test_selection_split_is_held_out_and_leaves_validation_alone(plays):
    plain = data.shakespeare(directory=plays)
    split = data.shakespeare(directory=plays, num_selection_plays=2)
    assert set(plain) == {"train", "validation"} and set(split) == {"train", "validation", "selection"}
    assert list(split["validation"]["text"]) == list(plain["validation"]["text"])
    assert all(line.startswith("winters_tale") for line in split["validation"]["text"])
    assert all(line.startswith("tempest") for line in split["selection"]["text"]) and len(split["selection"]) == 6
    # train loses exactly the selection lines, at its end: every block cut from its start is unchanged
    assert list(plain["train"]["text"]) == list(split["train"]["text"]) + list(split["selection"]["text"])
    assert not {line.split(" line")[0] for line in split["selection"]["text"]} & {
        line.split(" line")[0] for line in split["train"]["text"]
    }


def test_selection_split_never_separates_two_editions_of_a_play(plays):
    with pytest.raises(ValueError, match="editions of \\['tempest'\\]"):
        data.shakespeare(directory=plays, num_selection_plays=1)
    with pytest.raises(ValueError, match="cannot hold out"):
        data.shakespeare(directory=plays, num_selection_plays=5)
