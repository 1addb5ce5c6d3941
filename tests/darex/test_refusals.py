"""What darex refuses, and how: wrong paths and mismatched model pairs are one line on stderr and exit 2.

`python -m darex prune` and the paper preset check every path they are given before transformers is
called; a base and a fine-tune that are not the same architecture (tensors on one side only, or of
another shape) are refused, naming the tensors, and nothing is written. Tiny BERTs built from a config,
saved like Hugging Face models; no network.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from common.errors import EXIT_USER_ERROR, IncompatibleModelsError, PathNotFoundError, UserError
from darex.method import DeltaMismatchError, apply_delta, dare, delta_parameters
from darex.models import MLP, load_tokenizer, tiny_bert_config
from tests.test_cli import run_cli

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


def error_lines(stderr: str) -> list[str]:
    """What the CLI printed about the error: non-empty lines that are not timestamped log lines or progress bars."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line[:2].isdigit() and not line.startswith("Loading weights")
    ]


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr holds one ``darex: error:`` line (at most 2 lines in all about the error), no traceback, and the
    line contains every fragment; returns the line."""
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert 1 <= len(lines) <= 2, lines
    errors = [line for line in lines if line.startswith("darex: error: ")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ----------------------------------------------------------------------------------------------------
# delta_parameters: tensors on one side only, or of another shape, are an error that names them
# (DeltaMismatchError, a ValueError; only the callers that take the models from the user make it a user error)


def _perturbed(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_a_base_with_fewer_layers_is_refused_naming_the_missing_tensors():
    torch.manual_seed(0)
    base, finetuned = MLP(8, 16, 2, 3), MLP(8, 16, 3, 3)  # 2 hidden layers against 3
    with pytest.raises(DeltaMismatchError, match=r"2 tensor\(s\) only in the fine-tuned model") as err:
        delta_parameters(base, finetuned)
    assert "body.4.weight" in str(err.value) and "body.4.bias" in str(err.value)
    with pytest.raises(DeltaMismatchError, match=r"2 tensor\(s\) only in the pre-trained model"):
        delta_parameters(finetuned, base)
    assert isinstance(err.value, ValueError) and not isinstance(err.value, UserError), "the method layer's error"


def test_the_message_names_the_first_few_tensors_and_the_count():
    base = {f"layer.{i}.weight": torch.zeros(2) for i in range(3)}
    finetuned = {f"layer.{i}.weight": torch.ones(2) for i in range(10)}
    with pytest.raises(DeltaMismatchError) as err:
        delta_parameters(base, finetuned)
    message = str(err.value)
    assert "7 tensor(s) only in the fine-tuned model (layer.3.weight, layer.4.weight, layer.5.weight and 4 more)" in (
        message
    )
    assert "\n" not in message, "one line"


def test_shape_mismatches_are_listed_with_both_shapes():
    base, finetuned = MLP(8, 16, 2, 3), MLP(8, 32, 2, 3)
    with pytest.raises(DeltaMismatchError, match="shape") as err:
        delta_parameters(base, finetuned)
    assert "4 tensor(s) whose shape differs" in str(err.value)
    assert "(body.0.weight (16, 8) vs (32, 8), body.0.bias (16,) vs (32,), " in str(err.value)
    assert "and 1 more" in str(err.value)


def test_excluded_tensors_may_differ_or_exist_on_one_side_only():
    """A task head that only the fine-tuned model has (or of another size) is normal for classification."""
    torch.manual_seed(0)
    base = MLP(8, 16, 2, 3)
    finetuned = MLP(8, 16, 2, 5)  # another number of classes: the head's shape differs
    finetuned.body.load_state_dict({k.removeprefix("body."): v for k, v in _perturbed(base).items() if "body" in k})
    body_only = {k: v for k, v in base.state_dict().items() if not k.startswith("head.")}  # no head at all
    for pre in (base, body_only):
        deltas = delta_parameters(pre, finetuned)
        assert set(deltas) == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    with pytest.raises(DeltaMismatchError, match=r"head\.weight"):
        delta_parameters(body_only, finetuned, exclude=None)  # without the rule, the head is a real mismatch


def test_integer_buffers_are_not_deltas_and_need_not_match():
    base = {"w": torch.zeros(2), "position_ids": torch.arange(4)}
    finetuned = {"w": torch.ones(2), "num_batches_tracked": torch.tensor(3)}
    assert set(delta_parameters(base, finetuned, exclude=None)) == {"w"}


def test_apply_delta_refuses_deltas_for_tensors_the_base_lacks():
    base = MLP(8, 16, 2, 3)
    with pytest.raises(DeltaMismatchError, match=r"1 tensor\(s\) the pre-trained model lacks: body\.9\.weight"):
        apply_delta(base, {"body.9.weight": torch.zeros(16, 16)})


def test_a_mismatch_inside_our_own_experiment_code_is_a_bug_not_a_user_error(tmp_path, monkeypatch):
    """Where darex builds both models itself (the synthetic and text experiments, the tiny Llama pair), a
    mismatch is a naming bug: DeltaMismatchError keeps its traceback instead of becoming "pass the matching
    pair" with exit 2."""
    assert issubclass(DeltaMismatchError, ValueError) and not issubclass(DeltaMismatchError, UserError)
    with pytest.raises(DeltaMismatchError) as err:
        delta_parameters(MLP(8, 16, 2, 3), MLP(8, 16, 3, 3))
    assert not isinstance(err.value, IncompatibleModelsError)

    # End to end: the synthetic experiment's pair (built by our code) made mismatched; the CLI re-raises.
    from darex import synthetic

    monkeypatch.setenv("PRUNE_REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNE_REPRO_WORKERS", "1")  # the jobs run in this process, where the patches apply
    monkeypatch.setattr(synthetic, "_fine_tuned_pair", lambda cfg, seed, model, cache: {})
    monkeypatch.setattr(synthetic, "_load_pair", lambda states, cfg: (
        MLP(cfg.in_dim, cfg.hidden, cfg.depth, cfg.n_classes).eval(),
        MLP(cfg.in_dim, cfg.hidden, cfg.depth + 1, cfg.n_classes).eval(),
    ))  # fmt: skip
    args = ["reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path / "results"),
            "--set", "experiment=synthetic"]  # fmt: skip
    with pytest.raises(DeltaMismatchError, match="only in the fine-tuned model") as err:
        run_cli(*args)
    assert not isinstance(err.value, UserError)


def test_the_tiny_llama_pair_is_ours_so_its_mismatch_is_a_bug(monkeypatch):
    """decoder.base_path = decoder.finetuned_path = tiny-llama: both built by load_causal_lm, so a mismatch is
    not turned into IncompatibleModelsError (the test in test_decoder_biases covers the user's directories)."""
    from transformers import LlamaForCausalLM

    from darex import decoder
    from darex.config import TINY_LLAMA, DecoderConfig

    original = decoder.load_causal_lm

    def deeper_finetuned(path, dtype, role, vocab_size=0):
        if role != "finetuned":
            return original(path, dtype, role, vocab_size)
        config = decoder.tiny_llama_config(vocab_size)
        config.num_hidden_layers = 3
        return LlamaForCausalLM(config).to(dtype).eval()

    monkeypatch.setattr(decoder, "load_causal_lm", deeper_finetuned)
    dc = DecoderConfig(base_path=TINY_LLAMA, finetuned_path=TINY_LLAMA, dtype="float32")
    with pytest.raises(DeltaMismatchError, match=r"only in the fine-tuned model \(model\.layers\.2\.") as err:
        decoder.DecoderBench(dc, torch.device("cpu"))
    assert not isinstance(err.value, UserError)


# ----------------------------------------------------------------------------------------------------
# python -m darex prune: paths checked up front, incompatible pairs refused, nothing written


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny BERT directories: a 2-layer base, its fine-tune, a 3-layer fine-tune, a base without pooler
    weights, a body-only base (BertModel, no classifier), and a labelled file."""
    from safetensors.torch import save_file
    from transformers import BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("refusals")
    tokenizer = load_tokenizer("tiny-bert")
    vocab = tokenizer.vocab_size
    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config(vocab, 2)).eval()
    finetuned = BertForSequenceClassification(tiny_bert_config(vocab, 3)).eval()  # its own 3-class head
    with torch.no_grad():
        ft_state = finetuned.state_dict()
        for name, tensor in base.state_dict().items():
            if not name.startswith("classifier"):
                ft_state[name].copy_(tensor + 0.01 * torch.randn_like(tensor))
    deeper_config = tiny_bert_config(vocab, 2)
    deeper_config.num_hidden_layers = 3
    deeper = BertForSequenceClassification(deeper_config).eval()
    body = BertModel(tiny_bert_config(vocab, 2)).eval()
    body.load_state_dict({k.removeprefix("bert."): v for k, v in base.state_dict().items() if k.startswith("bert.")})
    for name, model in (("base", base), ("finetuned", finetuned), ("deeper", deeper), ("body", body)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    # A base checkpoint without the pooler: transformers would initialise it at random.
    (root / "no-pooler").mkdir()
    base.config.save_pretrained(root / "no-pooler")
    tokenizer.save_pretrained(root / "no-pooler")
    state = {k: v.contiguous() for k, v in base.state_dict().items() if "pooler" not in k}
    save_file(state, str(root / "no-pooler" / "model.safetensors"), metadata={"format": "pt"})
    finetuned.save_pretrained(root / "finetuned-no-tokenizer")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("no config.json here")
    (root / "config-only").mkdir()
    base.config.save_pretrained(root / "config-only")
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([("a wonderful, moving film", 1), ("dull and lifeless", 0), ("so-so", 2)] * 4)
    return root


def prune_args(root, out, *, base="base", finetuned="finetuned", extra=()):
    base_path = base if base.startswith("/") else str(root / base)
    finetuned_path = finetuned if finetuned.startswith("/") else str(root / finetuned)
    return ["prune", "--base", base_path, "--finetuned", finetuned_path, "--rate", "0.9", "--out", str(out),
            "--max-length", "16", "--device", "cpu", *extra]  # fmt: skip


@pytest.mark.parametrize("flag", ["--base", "--finetuned"])
def test_prune_with_a_model_path_that_does_not_exist(models, tmp_path, capsys, flag):
    out = tmp_path / "out"
    kwargs = {flag.strip("-"): "/nonexistent/model"}
    assert run_cli(*prune_args(models, out, **kwargs)) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) <= 2 and captured.out == ""
    assert_one_line_error(captured.err, f"{flag}: /nonexistent/model does not exist", "model directory")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--val", "--eval"])
def test_prune_with_a_data_file_that_does_not_exist(models, tmp_path, capsys, flag):
    out = tmp_path / "out"
    args = prune_args(models, out, extra=("--rescale", "labelled", "--val", str(models / "data.csv"),
                                          "--eval", str(models / "data.csv")))  # fmt: skip
    args[args.index(flag) + 1] = str(tmp_path / "missing.csv")
    assert run_cli(*args) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, f"{flag}: {tmp_path / 'missing.csv'} does not exist", "CSV/TSV")
    assert not out.exists()


@pytest.mark.parametrize(
    ("directory", "says"),
    [("not-a-model", "is not a Hugging Face model directory (it has no config.json)"), ("config-only", "cannot load")],
)
def test_prune_with_a_directory_that_holds_no_model(models, tmp_path, capsys, directory, says):
    out = tmp_path / "out"
    assert run_cli(*prune_args(models, out, base=directory)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_line_error(err, "--base: ", str(models / directory), says)
    assert not out.exists()


def test_prune_takes_the_base_tokenizer_when_the_fine_tune_has_none(models, tmp_path, capsys):
    out = tmp_path / "out"
    """transformers 5 builds a tokenizer of special tokens only from a directory without tokenizer files, without
    an error; prune must not use it (every word would be [UNK])."""
    from transformers import AutoTokenizer

    assert run_cli(*prune_args(models, out, finetuned="finetuned-no-tokenizer")) == 0
    saved = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert len(saved) == len(load_tokenizer("tiny-bert")), "the base's full tokenizer, not one of special tokens"
    capsys.readouterr()
    args = prune_args(models, tmp_path / "out2", base="config-only", finetuned="finetuned-no-tokenizer")
    assert run_cli(*args) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "--finetuned: neither", "holds a tokenizer")
    assert not (tmp_path / "out2").exists()


def test_prune_refuses_a_pair_of_different_depth_and_writes_nothing(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(*prune_args(models, out, finetuned="deeper")) == EXIT_USER_ERROR
    line = assert_one_line_error(capsys.readouterr().err, "--base", "--finetuned", "only in the fine-tuned model")
    from transformers import AutoConfig, AutoModelForSequenceClassification

    deeper = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(models / "deeper"))
    third_layer = [n for n in deeper.state_dict() if n.startswith("bert.encoder.layer.2.")]
    assert f"{len(third_layer)} tensor(s) only in the fine-tuned model ({third_layer[0]}, " in line
    assert f"and {len(third_layer) - 3} more" in line
    assert not out.exists(), "an incompatible pair writes no --out"


def test_prune_refuses_a_base_checkpoint_missing_tensors(models, tmp_path, capsys):
    """A base checkpoint without some tensors would get random ones from transformers: noise, not deltas."""
    out = tmp_path / "out"
    assert run_cli(*prune_args(models, out, base="no-pooler")) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "--base", "lacks 2 tensor(s)", "bert.pooler.dense", "--exclude")
    assert not out.exists()
    # Declaring them non-deltas is the documented way out.
    exclude = r"(^|\.)(classifier|head|lm_head|score)(\.|$)|pooler"
    assert run_cli(*prune_args(models, out, base="no-pooler", extra=("--exclude", exclude))) == 0
    assert (out / "sparse_delta.safetensors").is_file()


def test_prune_accepts_a_head_only_the_fine_tuned_model_has(models, tmp_path, capsys):
    """Base = the body alone (BertModel, no classifier); fine-tune = a 3-class classifier: a normal pair."""
    out = tmp_path / "out"
    args = prune_args(models, out, base="body", extra=("--rescale", "dare", "--eval", str(models / "data.csv")))
    assert run_cli(*args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept_fraction"] == pytest.approx(0.1, abs=0.02)
    from darex.storage import load_sparse_delta

    names = set(load_sparse_delta(out / "sparse_delta.safetensors"))
    assert "bert.encoder.layer.1.output.dense.weight" in names and "bert.pooler.dense.weight" in names
    assert not any(n.startswith("classifier") for n in names)


def test_prune_with_a_file_it_cannot_read_or_a_bad_option(models, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.csv"
    bad.write_text("words,stars\nfine,1\n")
    assert run_cli(*prune_args(models, out, extra=("--eval", str(bad)))) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, str(bad), "need a text column")
    assert not out.exists()
    for rescale, says in (("q=abc", "needs a number"), ("q=0.01", "q must lie in [1 - p, 1] = [0.1, 1]")):
        assert run_cli(*prune_args(models, out, extra=("--rescale", rescale))) == EXIT_USER_ERROR
        assert_one_line_error(capsys.readouterr().err, f"--rescale {rescale}", says)
    assert run_cli(*prune_args(models, out, extra=("--exclude", "(unclosed"))) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "--exclude", "not a regular expression")
    out.write_text("a file, not a directory")
    assert run_cli(*prune_args(models, out)) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, f"--out: {out} exists and is not a directory")


def test_debug_shows_the_traceback_of_a_refusal(models, tmp_path):
    with pytest.raises(PathNotFoundError, match="--base"):
        run_cli("--debug", *prune_args(models, tmp_path / "out", base="/nonexistent"))
    with pytest.raises(IncompatibleModelsError, match="only in the fine-tuned model"):
        run_cli(*prune_args(models, tmp_path / "out", finetuned="deeper"), "--debug")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# The paper preset: every config path checked before any work, naming the config key


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if the text or decoder experiment starts loading or training anything."""
    from darex import decoder, reproduce

    def refuse(*args, **kwargs):
        raise AssertionError("expensive work started before the paths were checked")

    monkeypatch.setattr(reproduce, "load_task", refuse)
    monkeypatch.setattr(decoder, "DecoderBench", refuse)


def _paper(tmp_path, **sets):
    args = ["reproduce", "--preset", "paper", "--no-readme", "--results-dir", str(tmp_path / "results")]
    for key, value in sets.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


def _labelled_files(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    return {f"text__{s}_file": str(tmp_path / f"{s}.tsv") for s in ("train", "val", "test")}


def test_paper_preset_with_a_model_path_that_does_not_exist(tmp_path, capsys, no_work):
    files = _labelled_files(tmp_path)
    assert run_cli(*_paper(tmp_path, text__model_path="/x", **files)) == EXIT_USER_ERROR
    assert_one_line_error(
        capsys.readouterr().err,
        "text.model_path: /x does not exist. Put a Hugging Face model directory",
        "--set text.model_path=",
    )
    assert not (tmp_path / "results" / "darex" / "paper").exists(), "no record"


def test_paper_preset_with_a_directory_that_holds_no_model(tmp_path, capsys, no_work):
    (tmp_path / "empty").mkdir()
    files = _labelled_files(tmp_path)
    assert run_cli(*_paper(tmp_path, text__model_path=str(tmp_path / "empty"), **files)) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "text.model_path", "no config.json")


def test_paper_preset_with_a_model_directory_without_tokenizer(tmp_path, capsys, no_work):
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config(100, 2)).save_pretrained(tmp_path / "model")
    capsys.readouterr()  # the saving's progress bar
    files = _labelled_files(tmp_path)
    assert run_cli(*_paper(tmp_path, text__model_path=str(tmp_path / "model"), **files)) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "text.model_path", "holds no tokenizer")


def test_paper_preset_names_every_missing_file(tmp_path, capsys, no_work):
    files = _labelled_files(tmp_path)
    files["text__val_file"] = str(tmp_path / "nope.tsv")
    files["text__test_file"] = ""
    assert run_cli(*_paper(tmp_path, text__model_path="tiny-bert", **files)) == EXIT_USER_ERROR
    line = assert_one_line_error(capsys.readouterr().err, f"text.val_file: {tmp_path / 'nope.tsv'} does not exist")
    assert "--set text.val_file=" in line and "Also to fix: text.test_file" in line


def test_decoder_paths_are_checked_before_any_model_is_loaded(tmp_path, capsys, no_work):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    sets = {"experiment": "decoder", "decoder__base_path": "/models/llama", "decoder__finetuned_path": "tiny-llama",
            "decoder__val_file": str(gsm8k), "decoder__test_file": str(gsm8k)}  # fmt: skip
    assert run_cli(*_paper(tmp_path, **sets)) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "decoder.base_path: /models/llama does not exist",
                          "--set decoder.base_path=")  # fmt: skip
    sets |= {"decoder__base_path": "tiny-llama", "decoder__test_file": str(tmp_path / "test.jsonl")}
    assert run_cli(*_paper(tmp_path, **sets)) == EXIT_USER_ERROR
    assert_one_line_error(capsys.readouterr().err, "decoder.test_file", "GSM8K")


def test_a_model_directory_transformers_cannot_read_is_one_line(tmp_path, capsys):
    """config.json present but no weights: the loader's error becomes a user error naming the config key."""
    from transformers import LlamaConfig

    from darex.decoder import load_causal_lm

    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=50).save_pretrained(tmp_path / "llama")  # fmt: skip
    with pytest.raises(UserError, match=r"decoder\.base_path: transformers cannot load .*llama") as err:
        load_causal_lm(str(tmp_path / "llama"), torch.float32, "base")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# load_or_explain: what transformers 5 raises for a directory the user named becomes one line; anything else
# (a wrong keyword argument of ours, a transformers internal) propagates unchanged


@pytest.fixture(scope="module")
def broken_dirs(tmp_path_factory):
    """Model directories transformers cannot load, each for its own reason."""
    from transformers import BertConfig, CLIPConfig

    root = tmp_path_factory.mktemp("broken")
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    config.save_pretrained(root / "config-only")  # no weights
    (root / "bad-json").mkdir()
    (root / "bad-json" / "config.json").write_text("{not json")
    (root / "no-model-type").mkdir()
    (root / "no-model-type" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (root / "unknown-type").mkdir()
    (root / "unknown-type" / "config.json").write_text(json.dumps({"model_type": "frobnicator"}))
    CLIPConfig().save_pretrained(root / "clip")  # a model type with no sequence-classification class
    config.save_pretrained(root / "corrupt-weights")
    (root / "corrupt-weights" / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    config.save_pretrained(root / "bad-tokenizer")
    (root / "bad-tokenizer" / "tokenizer.json").write_text("{bad")
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize(
    ("directory", "loader", "says"),
    [
        ("config-only", "model", "no file named model.safetensors"),  # OSError
        ("bad-json", "model", "is not a valid JSON file"),  # OSError
        ("no-model-type", "model", "Unrecognized model"),  # ValueError
        ("unknown-type", "model", "does not recognize this architecture"),  # ValueError
        ("clip", "model", "Unrecognized configuration class"),  # ValueError
        ("corrupt-weights", "model", "Error while deserializing header"),  # SafetensorError
        ("bad-tokenizer", "tokenizer", "not valid JSON"),  # json.JSONDecodeError (a ValueError)
        ("empty", "tokenizer", "Couldn't instantiate the backend tokenizer"),  # ValueError
    ],
)
def test_what_transformers_raises_for_an_unreadable_directory_is_one_line(broken_dirs, directory, loader, says):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from darex.checks import load_or_explain

    path = broken_dirs / directory
    auto = AutoTokenizer if loader == "tokenizer" else AutoModelForSequenceClassification
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with pytest.raises(UserError) as err:
            load_or_explain(lambda: auto.from_pretrained(path, local_files_only=True), "--base", path, loader)
    finally:
        hf_logging.set_verbosity(verbosity)
    message = str(err.value)
    assert message.startswith(f"--base: transformers cannot load {loader} from {path}: ") and says in message
    assert "\n" not in message and err.value.__cause__ is not None


def test_other_errors_of_the_load_call_propagate_unchanged():
    """A ValueError that is not about the directory (our own wrong argument, a transformers internal) is a bug:
    the same exception object, not a UserError."""
    from transformers import AutoTokenizer

    from darex.checks import load_or_explain

    internal = ValueError("some internal bug")

    def load():
        raise internal

    with pytest.raises(ValueError) as err:
        load_or_explain(load, "--base", "/some/model")
    assert err.value is internal and not isinstance(err.value, UserError)

    bad_type = TypeError("unexpected keyword argument 'frobnicate'")
    with pytest.raises(TypeError) as err:
        load_or_explain(lambda: (_ for _ in ()).throw(bad_type), "--base", "/some/model")
    assert err.value is bad_type

    # A real one: an option value transformers rejects, passed by (hypothetically) our code, for a good directory.
    from darex.models import minilm_path

    path = minilm_path()
    with pytest.raises(ValueError, match="Padding side") as err:
        load_or_explain(lambda: AutoTokenizer.from_pretrained(path, padding_side="middle", local_files_only=True),
                        "--base", path, "a tokenizer")  # fmt: skip
    assert not isinstance(err.value, UserError)


def test_dare_on_checked_deltas_still_round_trips():
    """The stricter checks leave the ordinary path unchanged: p = 0 restores the fine-tuned body."""
    torch.manual_seed(0)
    base, finetuned = MLP(8, 16, 2, 3), MLP(8, 16, 2, 3)
    finetuned.load_state_dict(_perturbed(base))
    restored = apply_delta(base, dare(delta_parameters(base, finetuned), 0.0))
    for name, tensor in finetuned.state_dict().items():
        if not name.startswith("head"):
            torch.testing.assert_close(restored[name], tensor)


@pytest.mark.parametrize(
    ("override", "named"),
    [("synthetic.seeds=(1,1)", "synthetic.seeds"), ("seeds=(1000,)", "seeds"), ("prune.mask_seeds=(999,)", "mask")],
)
def test_seeds_that_would_share_mask_ids_are_one_line_and_exit_2(tmp_path, capsys, override, named):
    """Mask ids are 1000·seed + m (m < 999): a repeated seed, a seed ≥ 1000 or a mask seed ≥ 999 would make two
    masks one id, so the run refuses before any work."""
    code = run_cli("reproduce", "--preset", "smoke", "--no-readme", "--results-dir", str(tmp_path), "--set", override)
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and named in err and "Traceback" not in err
