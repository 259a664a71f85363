"""StreamModels' grouped prefill (decoding/models.py): rows of very different lengths are prefilled in
groups and their caches joined; the logits and the following steps must be those of each row alone."""

from __future__ import annotations

import torch

from safetune.decoding.models import Part, StreamModels, length_groups
from safetune.models.loading import load_for_generation, resolve_model


def test_length_groups_split_where_a_row_is_under_three_quarters_of_the_longest():
    assert length_groups([145, 26, 150, 30]) == [[0, 2], [1, 3]]
    # 10 leads; 6 starts a group (6 < 7.5); 5 joins it (5 >= 4.5); 3 starts one (3 < 4.5).
    assert length_groups([10, 6, 5, 3]) == [[0], [1, 2], [3]]
    assert length_groups([4, 4, 4]) == [[0, 1, 2]]
    assert length_groups([7]) == [[0]]
    assert length_groups([3, 8, 4, 16, 12]) == [[3, 4], [1], [0, 2]]


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_grouped_prefill_and_steps_equal_each_row_alone(tiny_chatml):
    model, tokenizer = load_for_generation(resolve_model(str(tiny_chatml)), device="cpu")
    models = StreamModels([Part(model, ("role",))])
    text = "The old man finds the red book in the park and reads it aloud to the children. " * 3
    long_row = tokenizer(text)["input_ids"]
    rows = [long_row, long_row[:4], long_row[5:12], long_row[:-3]]
    assert len(length_groups(list(map(len, rows)))) == 3  # the grouped path, not one padded batch
    ids, mask, positions = _left_padded(rows, tokenizer.pad_token_id)
    logits = models.prefill(["role"] * len(rows), ids, mask, positions)
    cache = models.parts[0].cache
    assert cache.layers[0].keys.shape[-2] == ids.shape[1]  # joined at the batch's full width
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i], models.full_logits("role", row), atol=1e-4, rtol=1e-4)
    # Two steps on the joined cache, then keep rows 1 and 3 (the cache's batch_select_indices).
    next_position = positions[:, -1:] + 1
    for token in (11, 17):
        rows = [[*row, token] for row in rows]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=-1)
        tokens = torch.full((len(rows), 1), token, dtype=torch.long)
        logits = models.step(tokens, mask, next_position)
        next_position = next_position + 1
        for i, row in enumerate(rows):
            torch.testing.assert_close(logits[i], models.full_logits("role", row), atol=1e-4, rtol=1e-4)
    keep = torch.tensor([1, 3])
    models.keep(keep)
    rows = [[*rows[1], 5], [*rows[3], 5]]
    mask = torch.cat([mask[keep], mask.new_ones(2, 1)], dim=-1)
    logits = models.step(torch.full((2, 1), 5), mask, next_position[keep])
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i], models.full_logits("role", row), atol=1e-4, rtol=1e-4)
