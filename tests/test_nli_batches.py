"""distil.data.nli_batches: every training example once per epoch (fill rows weigh 0), split over processes;
evaluation rows pooled over languages and cut to each batch's longest row (counting is checked in test_xnli.py)."""

from __future__ import annotations

import numpy as np

from distil.data.nli_batches import EvalSet, NliBatches


def _encoded(count: int) -> dict[str, np.ndarray]:
    return {"labels": np.arange(count, dtype=np.int32) % 3, "input_ids": np.arange(count, dtype=np.int32)[:, None] + 1}


def test_training_batches_visit_every_example_once_per_epoch():
    source = NliBatches(_encoded(70), global_batch=32, seed=5, num_epochs=2, process_index=0, process_count=1)
    assert len(source) == 6  # 3 batches per epoch, the last with 26 fill rows
    for epoch in range(2):
        batches = [source[step] for step in range(3 * epoch, 3 * epoch + 3)]
        ids = np.concatenate([b["input_ids"][b["weights"] == 1, 0] for b in batches])
        assert sorted(ids) == list(range(1, 71))
        fill = np.concatenate([b["input_ids"][b["weights"] == 0, 0] for b in batches])
        assert len(fill) == 26 and not fill.any()
        assert all(b["labels"][b["weights"] == 1].tolist() == ((b["input_ids"][b["weights"] == 1, 0] - 1) % 3).tolist()
                   for b in batches)
    assert not np.array_equal(source[0]["input_ids"], source[3]["input_ids"])  # a new order each epoch


def test_processes_hold_consecutive_slices_of_the_global_batch():
    whole = NliBatches(_encoded(70), global_batch=32, seed=5, num_epochs=1, process_index=0, process_count=1)
    parts = [NliBatches(_encoded(70), global_batch=32, seed=5, num_epochs=1, process_index=index, process_count=4)
             for index in range(4)]
    for step in range(len(whole)):
        for name in ("input_ids", "labels", "weights"):
            np.testing.assert_array_equal(np.concatenate([part[step][name] for part in parts]), whole[step][name])


def test_eval_rows_pool_languages_by_length():
    def rows(lengths, label):
        mask = (np.arange(64)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
        return {"input_ids": mask * 7, "attention_mask": mask, "labels": np.full(len(lengths), label, np.int32)}

    eval_set = EvalSet.pool({"de": rows([50, 3, 20], 1), "en": rows([10, 40], 2)}, ("en", "de"))
    assert eval_set.encoded["attention_mask"].sum(1).tolist() == [3, 10, 20, 40, 50]
    assert eval_set.encoded["language"].tolist() == [1, 0, 1, 0, 1]
    batches = list(eval_set.batches(4, 16))
    assert [b["input_ids"].shape for b in batches] == [(4, 48), (4, 64)]  # 40 -> 48; 50 -> 64 (at most max_length)
    assert batches[1]["weights"].tolist() == [1, 0, 0, 0]
