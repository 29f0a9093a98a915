"""Stages I and II shared by two ranks (gloo, spawned CPU processes) give what one process gives: the same head
scores and heads, the same selection, checkpoints that resume across world sizes."""

import json

import pytest

from p2d_llamafactory.data.cache import progress_files
from p2d_llamafactory.data.select import select_examples
from p2d_llamafactory.files import HEADS_FILE, PROGRESS_FILE, SCORES_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import identify_heads
from tests.helpers.distributed import (
    HEAD_METHODS,
    KILLED_POOL,
    SELECTIONS,
    fhi_inputs,
    head_args,
    launch,
    patched_probing,
    selection_args,
    selection_inputs,
    selection_record,
)


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """One process's results, then the same scenarios on two ranks (after leaving a one-process p2d checkpoint of 2
    of its 3 batches in ``two/resume``)."""
    model = tiny_models["llama"]
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    single = {"heads": {}, "selection": {}}
    for method in HEAD_METHODS:
        head_set = identify_heads(fhi_inputs(model, one / f"heads_{method}"), head_args(method))
        single["heads"][method] = {"scores": head_set.scores, "selected": [list(h) for h in head_set.selected]}
    for method in SELECTIONS:
        selection = select_examples(selection_inputs(model, one / f"select_{method}"), selection_args(method))
        single["selection"][method] = selection_record(selection)
    killed_pool = select_examples(selection_inputs(model, one / "killed", KILLED_POOL), selection_args("p2d"))
    single["killed_pool"] = selection_record(killed_pool)
    with patched_probing(die_after=2), pytest.raises(KeyboardInterrupt):
        select_examples(selection_inputs(model, two / "resume"), selection_args("p2d"))
    return {"model": model, "one": one, "two": two, "single": single, "ranks": launch(2, model, two)}


def test_the_collectives(runs):
    for got in runs["ranks"]:
        sums = got["collectives"]["sums"]
        assert sums[0] == 3 * (1 + 2) and sums[2] == 4 * (1 + 2)
        assert sums[1] == pytest.approx(3 * sum(range(70_000)))  # float64, its own bucket
        mapped = got["collectives"]["mapped"]
        assert [value for value, _ in mapped] == [x * x for x in range(7)]
        assert [owner for _, owner in mapped] == [x % 2 for x in range(7)]  # rank r computed units r, r + 2, ...
        assert got["collectives"]["from_rank0"] == {"rank": 0}


@pytest.mark.parametrize("method", list(HEAD_METHODS))
def test_stage1_on_two_ranks_gives_the_one_process_heads(runs, method):
    single = runs["single"]["heads"][method]
    rank0, rank1 = (got["heads"][method] for got in runs["ranks"])
    assert rank0 == rank1  # every rank uses rank 0's head set
    assert rank0["selected"] == single["selected"]
    # the same micro-batches, gradients summed over the ranks in another order: float32 round-off, which W1 at
    # tau = 0.1 (near point masses) amplifies to a few 1e-6 relative (measured: at most 2.5e-6)
    flat = lambda scores: [score for row in scores for score in row]
    assert flat(rank0["scores"]) == pytest.approx(flat(single["scores"]), rel=1e-5, abs=1e-12)
    assert min(flat(single["scores"])) > 0
    saved = HeadSet.load(runs["two"] / f"heads_{method}" / HEADS_FILE)
    assert [list(h) for h in saved.selected] == single["selected"]


@pytest.mark.parametrize("method", list(SELECTIONS))
def test_stage2_on_two_ranks_gives_the_one_process_selection(runs, method):
    single = runs["single"]["selection"][method]
    rank0, rank1 = (got["selection"][method] for got in runs["ranks"])
    assert rank0 == rank1
    assert rank0["selected"] == single["selected"] and len(single["selected"]) == 6
    assert rank0["scores"] == single["scores"]  # each batch ran exactly as in one process
    out = runs["two"] / f"select_{method}"
    assert json.loads((out / SCORES_FILE).read_text())["selected"] == single["selected"]
    assert progress_files(out) == []  # every rank's checkpoint is gone once the scores are final


def test_two_ranks_resume_a_one_process_checkpoint(runs):
    # the one-process run was killed after 2 of its 3 batches (4 of 5 prompts): the ranks probe the last prompt only
    assert sum(got["resume"]["probed"] for got in runs["ranks"]) == 1
    for got in runs["ranks"]:
        assert got["resume"]["selected"] == runs["single"]["selection"]["p2d"]["selected"]
        assert got["resume"]["scores"] == runs["single"]["selection"]["p2d"]["scores"]


def test_a_two_rank_run_killed_mid_scoring_resumes_every_shard_in_one_process(runs):
    killed = runs["two"] / "killed"
    assert [got["killed"] for got in runs["ranks"]] == [2, 2]  # each rank finished one batch of 2 prompts
    files = progress_files(killed)
    assert [f.name for f in files] == [PROGRESS_FILE.replace(".jsonl", f".rank{r}.jsonl") for r in (0, 1)]
    assert [len(f.read_text().splitlines()) for f in files] == [1 + 2, 1 + 2]
    assert not (killed / SCORES_FILE).exists()
    with patched_probing() as sizes:
        resumed = select_examples(selection_inputs(runs["model"], killed, KILLED_POOL), selection_args("p2d"))
    assert sum(sizes) == 8 - 4  # both shards' prompts are finished, whichever world size rescores the rest
    assert selection_record(resumed) == runs["single"]["killed_pool"]
    assert progress_files(killed) == []
