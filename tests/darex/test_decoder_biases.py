"""The decoder path prunes every tensor under mlp/self_attn, biases included (Qwen2's q/k/v biases), and
refuses a base that is not the fine-tune's architecture. Tiny Qwen2 models built from a config, saved
like Hugging Face models; no network."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch

from common.errors import EXIT_USER_ERROR, IncompatibleModelsError, UserError
from common.runtime import generator
from darex.config import DecoderConfig
from darex.decoder import DecoderBench
from darex.method import dare
from darex.models import load_tokenizer
from tests.test_cli import run_cli


def tiny_qwen2(vocab_size: int, layers: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    """A 2-layer Qwen2 base, its fine-tune (every mlp/self_attn tensor moved, biases too), a 3-layer model."""
    root = tmp_path_factory.mktemp("qwen2")
    tokenizer = load_tokenizer("tiny-bert")  # any local tokenizer will do; MiniLM's is installed offline
    torch.manual_seed(0)
    base = tiny_qwen2(len(tokenizer))
    finetuned = tiny_qwen2(len(tokenizer))
    finetuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, param in finetuned.named_parameters():
            if "mlp" in name or "self_attn" in name:
                param.add_(0.02 * torch.randn(param.shape, generator=generator(len(name))))
    deeper = tiny_qwen2(len(tokenizer), layers=3)
    for name, model in (("base", base), ("finetuned", finetuned), ("deeper", deeper)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root, base, finetuned


def test_qwen2_biases_are_deltas(qwen_dirs):
    root, base, finetuned = qwen_dirs
    dc = DecoderConfig(base_path=str(root / "base"), finetuned_path=str(root / "finetuned"), dtype="float32")
    bench = DecoderBench(dc, torch.device("cpu"))
    include = re.compile(dc.include)
    expected = {n for n, _ in finetuned.named_parameters() if include.search(n)}
    assert set(bench.deltas) == expected
    biases = {n for n in expected if n.endswith(".bias")}
    assert biases == {f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(2) for p in "qkv"}
    ft_state, base_state = finetuned.state_dict(), base.state_dict()
    for name, delta in bench.deltas.items():
        torch.testing.assert_close(delta, ft_state[name] - base_state[name], rtol=0, atol=0)

    # Loading pruned deltas sets the biases to θ_P + Δ̂ too; with every delta dropped they are the base's.
    params = dict(bench.model.named_parameters())
    bench.load({n: torch.zeros_like(d) for n, d in bench.deltas.items()})
    for name in biases:
        torch.testing.assert_close(params[name], base_state[name], rtol=0, atol=0)
    pruned = dare(bench.deltas, 0.5, generator=generator(0))
    bench.load(pruned)
    for name in biases:
        torch.testing.assert_close(params[name], base_state[name] + pruned[name])
    kept = sum(int(pruned[n].count_nonzero()) for n in biases) / sum(pruned[n].numel() for n in biases)
    assert 0.2 < kept < 0.8, "DARE drops bias deltas too"


def test_a_decoder_pair_of_different_depth_is_refused(qwen_dirs, tmp_path, capsys):
    root, _, _ = qwen_dirs
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    sets = {"experiment": "decoder", "decoder.base_path": str(root / "base"), "decoder.finetuned_path":
            str(root / "deeper"), "decoder.val_file": str(gsm8k), "decoder.test_file": str(gsm8k),
            "decoder.dtype": "float32", "prune.rates": "(0.9,)"}  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "results"
    assert run_cli("reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(out), *args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("darex: error:")]
    assert "decoder.base_path" in line and "decoder.finetuned_path" in line
    assert "only in the fine-tuned model (model.layers.2." in line and "and 7 more" in line  # 10 per layer
    assert not (out / "darex" / "paper").exists(), "no record"
    with pytest.raises(IncompatibleModelsError):
        DecoderBench(DecoderConfig(base_path=str(root / "base"), finetuned_path=str(root / "deeper"),
                                   dtype="float32"), torch.device("cpu"))  # fmt: skip


def test_big_model_loading_with_a_device_map_gives_the_same_bench(qwen_dirs, monkeypatch):
    """``decoder.device_map`` loads the fine-tuned model with accelerate's big-model loading (here all on the CPU):
    the same deltas, in place where each tensor lives, and the same answers."""
    from transformers import AutoModelForCausalLM

    from darex.decoder import Problem

    root, _, _ = qwen_dirs
    dc = DecoderConfig(base_path=str(root / "base"), finetuned_path=str(root / "finetuned"), dtype="float32",
                       max_new_tokens=3, batch_size=2)  # fmt: skip
    plain = DecoderBench(dc, torch.device("cpu"))
    maps, original = [], AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        maps.append(kwargs.get("device_map"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    mapped = DecoderBench(replace(dc, device_map="cpu"), torch.device("cpu"))
    assert maps == [None, "cpu"], "the base loads plainly (to the CPU), the fine-tuned model with the device map"
    assert mapped.deltas.keys() == plain.deltas.keys()
    for name, delta in plain.deltas.items():
        torch.testing.assert_close(mapped.deltas[name], delta, rtol=0, atol=0)
    problems = [Problem(question=f"What is {i} + 1?", answer=float(i + 1)) for i in range(3)]
    pruned = dare(plain.deltas, 0.5, generator=generator(0))
    assert mapped.accuracy(pruned, problems, "mapped") == plain.accuracy(pruned, problems, "plain")


def test_a_device_map_under_a_launcher_is_refused(qwen_dirs, tmp_path, monkeypatch):
    from darex import config, decoder

    root, _, _ = qwen_dirs
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    cfg = config.paper()
    dc = replace(cfg.decoder, base_path=str(root / "base"), finetuned_path=str(root / "finetuned"),
                 val_file=str(gsm8k), test_file=str(gsm8k), device_map="auto")  # fmt: skip
    monkeypatch.setattr(decoder.dist, "world_size", lambda: 2)
    with pytest.raises(UserError, match=r"decoder\.device_map"):
        decoder.run(replace(cfg, experiment="decoder", decoder=dc), ctx=None)
