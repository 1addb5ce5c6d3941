"""The architecture columns of Tables 1 and 7: DeiT-B/S/T and ReViT-S/T with random weights, on this machine.

Parameters and FLOPs depend only on the architecture, so they can be compared with the paper exactly; speed can
be compared as a *ratio* to DeiT-B without ImageNet. ``python -m nvit archtable`` builds every model as a
:class:`~nvit.models.FlexViT` (224², patch 16, 1000 classes, by default with DeiT's distillation token, as the
models NViT prunes and the official ReViT builder are), counts its parameters and its MACs per image (torch's
FLOP counter on a real forward pass, checked against the closed form), times all models interleaved (round
robin, the order rotated every round, so drifts in machine load hit all of them) and reports each one's median
speedup over DeiT-B beside the paper's GPU speedups. Every model runs the same attention kernel (plain matrix
products, as the official timm-0.3.2 models do; ``fused_attention`` switches to torch's fused kernel, which only
serves equal QK and V widths and so would time DeiT and ReViT with different kernels).

The record goes to ``results/nvit/archtable/table.json`` (not ``record.json``: it is not a preset of
``reproduce``), with ``results.md``/``results.csv`` beside it, and its table into the card's ``archtable`` block.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import ConfigError, config_hash, describe, override, param, to_dict
from common.counting import count_flops, count_params
from common.results import RunRecord, load_record, markdown_table, measurements_csv, provenance, write_json_atomic
from common.runtime import atomic_write_bytes, device_name, results_root, select_device, set_threads

from . import paper as paper_numbers
from .models import FlexViT, ViTDims, count_dims_params, revit_dims, set_fused_attention, vit_macs

TABLE_FILE = "table.json"
BLOCK = "archtable"
T_ARCH = "Architecture columns of Tables 1 and 7 (random weights)"

ARCHITECTURES = {
    "DeiT-B": ("deit", 768, 12),
    "DeiT-S": ("deit", 384, 6),
    "DeiT-T": ("deit", 192, 3),
    "ReViT-S": ("official", 384, None),
    "ReViT-T": ("official", 176, None),
    "ReViT-S (Table 6 rule)": ("table6", 384, None),
    "ReViT-T (Table 6 rule)": ("table6", 176, None),
}
"""Name -> (rule, EMB, heads): DeiT's uniform widths (QK = V = 64, MLP = 4·EMB), or a ReViT rule at the EMB of
Table 7 ('official': the official revit_scratch.py builder; 'table6': the rule as Table 6's text states it)."""


@dataclass(frozen=True)
class ArchTableConfig:
    """What ``python -m nvit archtable`` builds and how it times it (``--set key=value`` overrides a field)."""

    models: tuple[str, ...] = param(
        tuple(ARCHITECTURES), "architectures to build and time (names of nvit.archtable.ARCHITECTURES)"
    )
    reference: str = param("DeiT-B", "the model every speedup is relative to (paper: DeiT-B)")
    image_size: int = param(224, "input height = width (paper: 224, patch 16: 196 patches)")
    distillation_token: bool = param(
        True,
        "build DeiT's distillation token and second head (NViT prunes deit_base_distilled; the official ReViT "
        "builder makes distilled models); the table also gives each model's size without them",
    )
    batch_size: int = param(8, "images per timed forward pass (paper: batch 256 on a GPU; 8 keeps a CPU run short)")
    rounds: int = param(20, "timed rounds; each round runs every model once, in an order rotated every round")
    warmup: int = param(3, "untimed rounds before the timed ones")
    fused_attention: bool = param(
        False, "time with torch's fused attention where QK = V (DeiT only); False = the same kernels for all models"
    )


def arch_dims(name: str, cfg: ArchTableConfig, *, distillation_token: bool | None = None) -> ViTDims:
    """The widths of architecture ``name`` at the config's input size (and token choice)."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; choose from {list(ARCHITECTURES)}")
    rule, emb, heads = ARCHITECTURES[name]
    common = dict(
        image_size=cfg.image_size,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        distillation_token=cfg.distillation_token if distillation_token is None else distillation_token,
    )
    if rule == "deit":
        return ViTDims.uniform(depth=12, emb=emb, heads=heads, qk=64, v=64, mlp=4 * emb, **common)
    return revit_dims(emb, 12, rule=rule, **common)


def build(dims: ViTDims, fused: bool) -> FlexViT:
    return set_fused_attention(FlexViT(dims).eval(), fused)


@torch.inference_mode()
def interleaved_times(models: dict[str, torch.nn.Module], inputs: torch.Tensor, rounds: int, warmup: int) -> dict:
    """Seconds per forward pass of every model, ``rounds`` times, round robin with the order rotated each round."""
    names = list(models)
    sync = torch.cuda.synchronize if inputs.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            start = time.perf_counter()
            models[name](inputs)
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def speedups(times: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    """Median, first and third quartile over rounds of (reference's time) / (model's time) in the same round."""
    out = {}
    for name, ts in times.items():
        ratios = sorted(a / b for a, b in zip(times[reference], ts, strict=True))
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "ms": 1000 * statistics.median(ts)}
    return out


def run(cfg: ArchTableConfig, *, device: torch.device, threads: int, command: str) -> RunRecord:
    if cfg.reference not in cfg.models:
        raise ConfigError(f"reference {cfg.reference!r} must be one of models={cfg.models}")
    started = time.perf_counter()
    record = RunRecord(
        paper="nvit",
        preset="archtable",
        command=command,
        config=to_dict(cfg),
        config_hash=config_hash(cfg),
        seeds=[],
        provenance=provenance(device=str(device), device_name=device_name(device), threads=threads),
    )
    models, rows = {}, {}
    example = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    for name in cfg.models:
        dims = arch_dims(name, cfg)
        torch.manual_seed(0)
        model = build(dims, cfg.fused_attention)
        params = count_params(model)
        macs = count_flops(model, example) // 2
        if params != count_dims_params(dims) or macs != round(vit_macs(dims)):
            raise AssertionError(f"{name}: counted {params} params / {macs} MACs, closed form "
                                 f"{count_dims_params(dims)} / {vit_macs(dims):.0f}")  # fmt: skip
        other = arch_dims(name, cfg, distillation_token=not cfg.distillation_token)
        rows[name] = {
            "dims": dims.to_json(),
            "params": params,
            "macs": macs,
            "params_other_tokens": count_dims_params(other),
            "macs_other_tokens": round(vit_macs(other)),
        }
        models[name] = model.to(device)
    inputs = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size,
                         generator=torch.Generator().manual_seed(1)).to(device)  # fmt: skip
    speed = speedups(interleaved_times(models, inputs, cfg.rounds, cfg.warmup), cfg.reference) if cfg.rounds else {}
    tag = "with" if cfg.distillation_token else "without"
    other = "without" if cfg.distillation_token else "with"
    timing = f"{device_name(device)} ({device.type}), batch {cfg.batch_size}, {threads} thread(s), {cfg.rounds} rounds"
    for name, row in rows.items():
        base = name.split(" (")[0]

        def paper(metric, table=None, base=base):
            try:
                pn = paper_numbers.lookup(base, metric, table)
            except KeyError:
                return {}
            return {"paper": pn.value, "paper_source": f"{pn.source}, {base}"}

        record.add(T_ARCH, name, f"params, {tag} distillation token", row["params"] / 1e6, unit="M", digits=3,
                   **paper("params"))  # fmt: skip
        record.add(T_ARCH, name, f"params, {other} distillation token", row["params_other_tokens"] / 1e6, unit="M",
                   digits=3)  # fmt: skip
        record.add(T_ARCH, name, f"MACs per image, {tag} distillation token", row["macs"] / 1e9, unit="G", digits=3,
                   **paper("FLOPs"))  # fmt: skip
        record.add(T_ARCH, name, f"MACs per image, {other} distillation token", row["macs_other_tokens"] / 1e9,
                   unit="G", digits=3)  # fmt: skip
        if speed:
            record.add(T_ARCH, name, f"speedup over {cfg.reference} measured here", speed[name]["median"],
                       unit="x", digits=2, note=timing,
                       **paper("speedup vs DeiT-B, V100, batch 256", paper_numbers.T1))  # fmt: skip
            t7 = paper("speedup vs DeiT-B", paper_numbers.T7)
            if t7:
                record.add(T_ARCH, name, "speedup over DeiT-B, Table 7", t7["paper"], unit="x", digits=2,
                           note="the paper's number (no measurement of ours)", **t7)  # fmt: skip
    record.extra = {"rows": rows, "speedups": speed, "timing": timing, "reference": cfg.reference}
    record.provenance["wall_time_s"] = round(time.perf_counter() - started, 2)
    return record


def render(record: RunRecord) -> str:
    """The card's ``archtable`` block: one row per architecture, ours beside the paper's."""
    ex, cfg = record.extra, record.config
    tag = "with" if cfg["distillation_token"] else "without"
    other = "without" if cfg["distillation_token"] else "with"
    speed = ex.get("speedups") or {}
    headers = [
        "Model",
        "EMB",
        "heads per block",
        "QK per head",
        "params [M] (paper)",
        f"params [M], {other} dist. token",
        "MACs [G] (paper FLOPs)",
        f"MACs [G], {other} dist. token",
    ]
    if speed:
        headers += [f"speedup over {ex['reference']}, measured here [x] (IQR)", "paper speedup: Table 1 (V100) / 7"]
    body = []
    for name, row in ex["rows"].items():
        d = row["dims"]
        base = name.split(" (")[0]

        def pn(metric, table=None, base=base):
            try:
                return f"{paper_numbers.lookup(base, metric, table).value:g}"
            except KeyError:
                return "–"

        cells = [name, d["emb"], "/".join(map(str, d["heads"])) if len(set(d["heads"])) > 1 else d["heads"][0],
                 "/".join(map(str, d["qk"])) if len(set(d["qk"])) > 1 else d["qk"][0],
                 f"{row['params'] / 1e6:.2f} ({pn('params')})", f"{row['params_other_tokens'] / 1e6:.2f}",
                 f"{row['macs'] / 1e9:.2f} ({pn('FLOPs')})", f"{row['macs_other_tokens'] / 1e9:.2f}"]  # fmt: skip
        if speed:
            s = speed[name]
            cells += [f"{s['median']:.2f} ({s['q1']:.2f}–{s['q3']:.2f})",
                      f"{pn('speedup vs DeiT-B, V100, batch 256', paper_numbers.T1)} / "
                      f"{pn('speedup vs DeiT-B', paper_numbers.T7)}"]  # fmt: skip
        body.append(cells)
    p = record.provenance
    when = f"commit `{(p.get('git_commit') or 'unknown')[:10]}`{' (dirty)' if p.get('git_dirty') else ''}"
    timed = (
        f"Speedups: median over {cfg['rounds']} interleaved rounds of DeiT-B's time / the model's time in the "
        f"same round ({ex['timing']}, input {cfg['image_size']}², attention "
        f"{'fused where QK = V' if cfg['fused_attention'] else 'as plain matrix products for every model'})."
    )
    if not speed:
        timed = "Not timed in this record (`--set rounds=0`): run the command above to add the speedups."
    return (
        f"Command: `{record.command}` · {when} · {p.get('device_name')} · {p.get('wall_time_s')} s · "
        f"{str(p.get('started_at', ''))[:10]}\n\n"
        f"Models {tag} DeiT's distillation token (params and MACs {other} it beside them), random weights, "
        f"224² input with patch 16; MACs per image from torch's FLOP counter on a real forward pass (equal to the "
        f'closed form), the paper\'s "FLOPs" being MACs. {timed} Paper numbers: params and FLOPs from Table 1 '
        "(DeiT) and Table 7 (ReViT); speedups over DeiT-B from Table 1 (V100, batch 256) and Table 7.\n\n"
        + markdown_table(headers, body)
    )


def write(record: RunRecord, out_dir: Path, readme: Path | None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / TABLE_FILE, record.to_json())
    body = render(record)
    atomic_write_bytes(out_dir / "results.md", (body + "\n").encode())
    atomic_write_bytes(out_dir / "results.csv", measurements_csv(record.measurements).encode())
    if readme is not None:
        from common.results import update_readme_block

        update_readme_block(readme, BLOCK, body)
    return out_dir / TABLE_FILE


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set rounds=5 (--list shows the fields)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default: the issue's CPU comparison), cuda, cuda:N")
    parser.add_argument("--results-dir", type=Path, default=None, help="where the record goes (default: results/)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the card's archtable block")
    parser.add_argument("--render", action="store_true", help="only re-render the card's block from the saved record")
    parser.add_argument("--list", action="store_true", help="print the fields with their help and exit")


def handler(args: argparse.Namespace) -> int:
    from common.cli import readme_path

    out_dir = (args.results_dir or results_root()) / "nvit" / "archtable"
    readme = None if args.no_readme else readme_path("nvit")
    if args.list:
        for key, value, help_text in describe(ArchTableConfig()):
            print(f"  {key:<20} {value!r:<24} {help_text}")
        return 0
    if args.render:
        write(load_record(out_dir / TABLE_FILE), out_dir, readme)
        return 0
    cfg = override(ArchTableConfig(), args.sets)
    threads = set_threads(args.threads)
    command = " ".join(["python -m nvit archtable", *(f"--set {s}" for s in args.sets)]
                       + ([f"--threads {args.threads}"] if args.threads else []))  # fmt: skip
    record = run(cfg, device=select_device(args.device), threads=threads, command=command)
    path = write(record, out_dir, readme)
    print(f"wrote {path}")
    return 0
