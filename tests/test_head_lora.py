"""Head-level LoRA: the KV heads a choice trains, exact parameter counts (by hand), training that
changes only the chosen heads' slices of q/k/v/o (the merged weights against the base), zeros that
stay zero under AdamW with weight decay, and a saved adapter that plain peft loads to the same logits.

The tiny LLaVA's Llama has hidden 64, 4 query heads of 16 and 2 KV heads (grouped-query attention:
query heads 0, 1 read KV head 0; 2, 3 read KV head 1), 2 layers: q_proj and o_proj are 64 x 64,
k_proj and v_proj 32 x 64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hi_core.data.datasets import read_dataset, write_synthetic
from hi_core.base.errors import InputError
from hi_core.tuning.finetune import DataConfig, FinetuneConfig
from hi_core.tuning.training import lora_attached, lora_config, train_lora, trainable_parameters
from hi_core.tuning.head_lora import HeadPlan, check_targets, head_counts, head_masks, heads_only, plan_heads

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = DataConfig(max_new_tokens=3, meteor=False)
HEAD_DIM, HIDDEN = 16, 64


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return list(read_dataset(write_synthetic(tmp_path_factory.mktemp("data"), n=8, seed=3, size=48, order="reading")))


@pytest.mark.parametrize(
    "num_kv_heads, heads, expected",
    [(2, ((0, 1), (1, 2), (1, 3)), {0: (0,), 1: (1,)}),  # GQA: 2 query heads per KV head
     (2, ((0, 0), (0, 3)), {0: (0, 1)}),
     (4, ((0, 1), (0, 3)), {0: (1, 3)}),  # multi-head attention: each query head its own KV head
     (1, ((0, 2), (1, 0)), {0: (0,), 1: (0,)})],  # multi-query attention: one KV head
)
def test_a_kv_head_is_trained_when_any_of_its_query_heads_is_chosen(num_kv_heads, heads, expected):
    plan = HeadPlan(heads=heads, num_heads=4, num_kv_heads=num_kv_heads)
    assert plan.layers == tuple(expected)
    assert {layer: plan.kv_heads(layer) for layer in plan.layers} == expected
    assert plan.kv_heads_json() == {str(layer): list(kv) for layer, kv in expected.items()}


def test_the_tiny_model_has_grouped_query_attention(llava):
    assert head_counts(llava) == (4, 2)


def _attached(llava, heads, rank=4):
    """LoRA on the layers of `heads`, masked to them: (context manager stack entries)."""
    plan = plan_heads(llava, heads)
    config = FinetuneConfig(heads=heads, rank=rank, steps=4, batch_size=2, lr=2e-2, warmup=0.0, weight_decay=0.1, data=FAST)
    return plan, config


@pytest.mark.parametrize(
    "heads, expected",
    # by hand, rank 4: a wrapped layer costs its whole A of q, k, v (4 x 64 each) and B of o (64 x 4),
    # 1024, plus 4 x 16 per chosen query head in q's B and o's A, and per trained KV head in k's and v's B.
    [(((0, 1),), 1024 + 64 * (1 + 1 + 1 + 1)),  # layer 0: query head 1, KV head 0
     (((0, 1), (1, 2), (1, 3)), 1024 + 64 * 4 + 1024 + 64 * (2 + 1 + 1 + 2)),  # 1280 + 1408
     (((1, 0), (1, 2)), 1024 + 64 * (2 + 2 + 2 + 2))],  # two KV heads in layer 1
)
def test_trainable_parameters_count_exactly_the_unmasked_entries(llava, heads, expected):
    plan, config = _attached(llava, heads)
    with lora_attached(llava, lora_config(llava, plan.layers, config)) as peft_model:
        with heads_only(head_masks(llava, plan)) as masks:
            assert trainable_parameters(peft_model, masks) == expected
            assert trainable_parameters(peft_model) > expected  # without the masks: the whole factors


def test_every_head_of_a_layer_is_layer_lora(llava):
    """All four heads of layer 1: no entry is masked, the count is the layer's LoRA count."""
    plan, config = _attached(llava, tuple((1, head) for head in range(4)))
    with lora_attached(llava, lora_config(llava, (1,), config)) as peft_model:
        whole = trainable_parameters(peft_model)
        with heads_only(head_masks(llava, plan)) as masks:
            assert trainable_parameters(peft_model, masks) == whole == 4 * (64 + 64) * 2 + 4 * (64 + 32) * 2
            assert all(bool(mask.all()) for mask in masks.values())


def _blocks(weight: torch.Tensor, size: int, dim: int) -> list[torch.Tensor]:
    return list(torch.split(weight, size, dim=dim))


@pytest.mark.parametrize("heads", [((0, 1), (1, 2), (1, 3)), ((1, 0),)])
def test_training_changes_only_the_chosen_heads_slices(llava, records, heads):
    """After a few AdamW steps (weight decay 0.1), merge the adapter on a copy and compare with the
    base: q rows of the chosen query heads, k/v rows of their KV heads and o columns of the chosen
    heads changed; every other entry of every weight of the model identical."""
    base = {name: tensor.clone() for name, tensor in llava.model.state_dict().items()}
    plan, config = _attached(llava, heads)
    with lora_attached(llava, lora_config(llava, plan.layers, config)) as peft_model:
        with heads_only(head_masks(llava, plan)) as masks:
            losses = train_lora(llava, records, config)
            for parameter, mask in masks.items():  # masked entries exactly zero, the others trained
                assert torch.count_nonzero(parameter[~mask]) == 0 and torch.count_nonzero(parameter[mask]) > 0
            merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert len(losses) == 4
    prefix = "model.language_model.layers"
    changed = set()
    for layer in range(2):
        for name, rows, size, chosen in (("q_proj", True, HEAD_DIM, plan.query_heads(layer)),
                                         ("k_proj", True, HEAD_DIM, plan.kv_heads(layer)),
                                         ("v_proj", True, HEAD_DIM, plan.kv_heads(layer)),
                                         ("o_proj", False, HEAD_DIM, plan.query_heads(layer))):
            key = f"{prefix}.{layer}.self_attn.{name}.weight"
            after, before = _blocks(merged[key], size, 0 if rows else 1), _blocks(base[key], size, 0 if rows else 1)
            for head, (new, old) in enumerate(zip(after, before)):
                if head in chosen:
                    assert not torch.equal(new, old), f"{key}: head block {head} was chosen but did not change"
                else:
                    assert torch.equal(new, old), f"{key}: head block {head} was not chosen but changed"
            changed.add(key)
    assert merged.keys() == base.keys()
    assert all(torch.equal(merged[name], base[name]) for name in base if name not in changed)  # MLPs, norms, vision, ...
    assert all(torch.equal(tensor, base[name]) for name, tensor in llava.model.state_dict().items())  # the base restored


def test_masked_entries_get_zero_gradients_and_the_hooks_go_on_exit(llava, records):
    plan, config = _attached(llava, ((0, 2),))
    with lora_attached(llava, lora_config(llava, plan.layers, config)):
        masks = head_masks(llava, plan)
        with heads_only(masks):
            train_lora(llava, records, replace_steps(config, 1))
        parameter, mask = next(iter(masks.items()))
        parameter.grad = None
        (parameter * torch.randn_like(parameter)).sum().backward()  # outside the block: no hook masks it
        assert torch.count_nonzero(parameter.grad[~mask]) > 0


def replace_steps(config: FinetuneConfig, steps: int) -> FinetuneConfig:
    from dataclasses import replace

    return replace(config, steps=steps)


def test_the_saved_adapter_loads_with_plain_peft_and_gives_the_same_logits(llava, llava_dir, records, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from hi_core.tuning.training import training_batch

    plan, config = _attached(llava, ((0, 1), (1, 3)))
    batch = training_batch(llava, records[:2], config.data.prompt)
    with lora_attached(llava, lora_config(llava, plan.layers, config)) as peft_model:
        with heads_only(head_masks(llava, plan)):
            train_lora(llava, records, config)
        peft_model.save_pretrained(tmp_path / "adapter")
        with torch.no_grad():
            expected = peft_model(**batch).logits
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    q_b = saved["base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_B.weight"]  # (64, rank)
    assert torch.count_nonzero(q_b[: 3 * HEAD_DIM]) == 0 and torch.count_nonzero(q_b[3 * HEAD_DIM :]) > 0
    o_a = saved["base_model.model.model.language_model.layers.0.self_attn.o_proj.lora_A.weight"]  # (rank, 64)
    assert torch.count_nonzero(o_a[:, HEAD_DIM : 2 * HEAD_DIM]) > 0 and torch.count_nonzero(o_a) == torch.count_nonzero(o_a[:, HEAD_DIM : 2 * HEAD_DIM])
    base = AutoModelForImageTextToText.from_pretrained(llava_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = loaded(**batch).logits
        untuned = llava.model(**batch).logits
    assert torch.allclose(logits, expected, atol=1e-5) and not torch.allclose(logits, untuned, atol=1e-3)


def test_only_the_projections_it_can_slice(llava):
    check_targets(["self_attn.q_proj", "self_attn.o_proj"])
    with pytest.raises(InputError, match=r"head-level LoRA slices q_proj, k_proj, v_proj, o_proj by head; this attention's "
                                         r"target 'mixer.in_proj' is none of them"):
        check_targets(["self_attn.q_proj", "mixer.in_proj"])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"layers": (1,), "heads": "top"}, r"give layers or heads, not both \(got layers \(1,\) and heads 'top'\)"),
     ({"heads": "best"}, "heads must be one of top, bottom, random or layer:head pairs"),
     ({"heads": "1:2,1-3"}, "heads must be one of top, bottom, random or layer:head pairs"),
     ({"heads": "0:1,0:1"}, "heads 0:1,0:1 repeat a head"),
     ({"heads": ((0, -1),)}, "layers and heads are numbered from 0"),
     ({"heads": ()}, "give at least one layer:head pair")],
)
def test_config_refuses_bad_head_choices(kwargs, message):
    with pytest.raises(InputError, match=message):
        FinetuneConfig(**kwargs)


def test_config_heads_and_strategy_names():
    assert FinetuneConfig().layers == "top" and FinetuneConfig().heads is None and FinetuneConfig().strategy == "top"
    assert FinetuneConfig(heads="0:1, 1:3").heads == ((0, 1), (1, 3))
    assert FinetuneConfig(heads="random").layers is None
    assert [FinetuneConfig(heads=h).strategy for h in ("top", "bottom", "random", "0:1")] == \
        ["top-heads", "bottom-heads", "random-heads", "list-heads"]


# --- the head blocks are the model's own: an oracle from its forward --------------------------


@pytest.fixture(scope="module")
def qwen3_5(tmp_path_factory):
    """A hybrid Qwen3.5 (layers 1, 3 softmax; 4 heads of 16, 2 KV heads) whose q_proj is gated: each
    head's 32 rows are its query then its gate."""
    from hi_core.model.loading import LoadConfig, load_model

    from . import tiny_qwen3_5

    return load_model(LoadConfig(model=str(tiny_qwen3_5.build_qwen3_5(tmp_path_factory.mktemp("qwen3_5"))), device="cpu"))


@pytest.mark.parametrize("family, layer", [("llava", 1), ("qwen3_5", 3)])
@pytest.mark.parametrize("target, changed", [("q_proj", {1}), ("k_proj", {0, 1}), ("v_proj", {0, 1})])
def test_the_trained_rows_feed_only_the_chosen_heads(request, records, family, layer, target, changed):
    """Fill the trainable entries of LoRA B (those the masks keep, for query head 1) with noise, and
    look at each head's attention output (o_proj's input, in head blocks): only head 1 changes for
    q_proj (its query, and in Qwen3.5 its gate), only the heads reading KV head 0 (0 and 1) for k/v."""
    from hi_core.tuning.training import training_batch

    loaded = request.getfixturevalue(family)
    plan = plan_heads(loaded, ((layer, 1),))
    config = FinetuneConfig(heads=((layer, 1),), targets=(target,), rank=2)
    batch = training_batch(loaded, records[:1], config.data.prompt)
    batch.pop("labels")
    attention = loaded.adapter.attention_modules(loaded.model)[layer]
    seen = []
    hook = attention.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with lora_attached(loaded, lora_config(loaded, plan.layers, config)) as peft_model:
            with heads_only(head_masks(loaded, plan)) as masks:
                assert len(masks) == 1
                with torch.no_grad():
                    for parameter, mask in masks.items():
                        parameter.copy_(torch.randn(parameter.shape) * mask)
                    with peft_model.disable_adapter():
                        peft_model(**batch)
                    peft_model(**batch)
    finally:
        hook.remove()
    before, after = (output.reshape(*output.shape[:-1], plan.num_heads, -1) for output in seen)  # (B, T, heads, head_dim)
    difference = (after - before).abs().amax(dim=(0, 1, 3))  # (heads,)
    assert {head for head in range(plan.num_heads) if difference[head] > 1e-4} == changed
    assert all(float(difference[head]) == 0.0 for head in range(plan.num_heads) if head not in changed)
