"""Write the benchmark figures into the docs from bench/results/*.json, so that no figure is
copied by hand: docs/benchmarks.md whole, every `<!-- results: NAME -->` ... `<!-- end
results -->` block of docs/*.md, and the apps table of README.md (between `<!-- apps -->`
and `<!-- end apps -->`).

    python bench/report.py           # rewrite them
    python bench/report.py --check   # exit 1 if any is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- results: ([\w.-]+) -->\n)(.*?)(<!-- end results -->)", re.S)
APPS = re.compile(r"(<!-- apps -->\n)(.*?)(<!-- end apps -->)", re.S)

Figures = list[tuple[str, str]]  # (what, value)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def classify_fashion(r: dict) -> Figures:
    m = r["models"]
    return [
        ("Fashion-MNIST test accuracy, ResNet", f"{pct(m['resnet']['test_acc'])} "
         f"(goal {pct(r['goals_test_acc']['resnet'])}, {m['resnet']['wall_s'] / 60:.0f} min)"),
        ("Fashion-MNIST test accuracy, ViT", f"{pct(m['vit']['test_acc'])} "
         f"(goal {pct(r['goals_test_acc']['vit'])}, {m['vit']['wall_s'] / 60:.0f} min)"),
    ]  # fmt: skip


def trainer_overhead(r: dict) -> Figures:
    return [("Trainer speed / a plain PyTorch loop (ResNet-18)",
             f"{r['ratio_trainer_over_plain']:.2f}x")]  # fmt: skip


def denoise_quality(r: dict) -> Figures:
    p = r["psnr"]
    return [("Set12 PSNR, sigma 25", f"{p['model']:.2f} dB (noisy {p['noisy_input']:.2f} dB)")]


def denoise_peers(r: dict) -> Figures:
    p = r["psnr"]
    return [("Set12 PSNR of BM3D / OpenCV NLM", f"{p['bm3d']:.2f} / {p['opencv_nlm']:.2f} dB")]


def denoise_set12(r: dict) -> Figures:
    return denoise_quality(r) + denoise_peers(r)


def segment_quality(r: dict) -> Figures:
    f = r["figures"]
    return [("EM membranes: pixel accuracy, membrane IoU",
             f"{f['pixel_acc']:.3f}, {f['membrane_iou']:.3f} "
             f"(goals {r['goals']['pixel_acc']}, {r['goals']['membrane_iou']})")]  # fmt: skip


def segment_speed(r: dict) -> Figures:
    f = r["figures"]
    return [("Inference speed / torchvision fcn_resnet50", f"{f['unet_vs_fcn_resnet50']:.1f}x")]


def segment_membrane(r: dict) -> Figures:
    return segment_quality(r) + segment_speed(r)


def detect_raccoon(r: dict) -> Figures:
    return [("Raccoons (32 held out): mAP@.5, mAP@[.5:.95]",
             f"{r['map_50']:.3f}, {r['map']:.3f}")]  # fmt: skip


def detect_scenes(r: dict) -> Figures:
    return [("Built-in scenes: mAP@.5", f"{r['map_50']:.3f} (goal {r['goal_map_50']})")]


def detect_speed(r: dict) -> Figures:
    return [("Inference speed / torchvision ssd300_vgg16",
             f"{r['ratio_vs_ssd300_vgg16_full']:.1f}x")]  # fmt: skip


def asr_fsdd(r: dict) -> Figures:
    figures = [("FSDD unseen speakers: mean WER as trained / --adapt", f"{pct(r['mean_wer'])} / "
                f"{pct(r['mean_wer_adapted'])}")]  # fmt: skip
    if "mean_wer_tuned" in r:
        passes = r.get("adapt_passes")
        figures.append((f"FSDD unseen speakers: mean WER, --adapt-passes {passes}",
                        f"{pct(r['mean_wer_tuned'])} (goal 5%)"))  # fmt: skip
    return figures


def asr_speed(r: dict) -> Figures:
    return [("Decoding speed / openai-whisper (same dims)", f"{r['tokens_per_s_ratio']:.2f}x")]


def clip_fashion(r: dict) -> Figures:
    return [("Fashion-MNIST zero-shot accuracy", f"{pct(r['zero_shot_acc_ensemble'])} "
             f"(goal {pct(r['goal_zero_shot_acc'])})")]  # fmt: skip


def clip_throughput(r: dict) -> Figures:
    ratios = {k: v["ratio_lbdl_over_open_clip"] for k, v in r["results"].items()}
    shown = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    return [("Training speed / open_clip", shown)]


def dqn_cartpole(r: dict) -> Figures:
    return [("CartPole-v1: median steps to return 475", f"{r['median_steps_to_475']:,} "
             f"({r['solved_seeds']} of {len(r['runs'])} seeds solved)")]  # fmt: skip


def dqn_speed(r: dict) -> Figures:
    shown = ", ".join(f"{k} {v['ratio_wall']:.2f}x" for k, v in r["envs"].items())
    return [("Training steps/s / Stable-Baselines3", shown)]


def dqn_pong(r: dict) -> Figures:
    frames, last, _ = r["evals_frames_mean_std"][-1]
    return [("Pong: last evaluation", f"{last:+.1f} after {frames:,} frames"
             + ("" if r.get("finished") else " (run not finished)"))]  # fmt: skip


def diffusion_fashion(r: dict) -> Figures:
    return [("Fashion-MNIST samples: classifier accuracy, Fréchet distance",
             f"{pct(r['mean_class_acc'])} (goal {pct(r['goal_mean_class_acc'])}), "
             f"{r['frechet_distance']:.2f}")]  # fmt: skip


def resume_signals(r: dict) -> Figures:
    return [("Resume after SIGINT/SIGTERM at random moments: bit-identical",
             f"{r['exact']} of {r['interrupted']} ({r['interrupted_mid_epoch']} mid-epoch)")]


def diffusion_speed(r: dict) -> Figures:
    return [("Sampling speed / diffusers UNet2DModel", f"{r['ratio']:.2f}x")]


def inference_speed(r: dict) -> Figures:
    rows = [("CPU fp32 matmul peak (same run)", f"{r['peak_gflops_fp32']:.1f} GFLOP/s")]
    for app, a in r["apps"].items():
        v = a["variants"]
        speeds = ", ".join(f"{k.replace('_', ' ')} {x['per_s']:.3g}/s"
                           for k, x in v.items() if "per_s" in x)  # fmt: skip
        accuracy = ", ".join(f"{k.replace('_', ' ')} {x['accuracy']:.4g}"
                             for k, x in v.items() if "accuracy" in x)  # fmt: skip
        int8 = f"{a['int8_speedup']:.2f}x" if a.get("int8_speedup") else "n/a"
        ort = a.get("onnxruntime_over_torch_fp32")
        rows.append((f"{app}: int8 / fp32, ONNX Runtime / PyTorch fp32",
                     f"{int8}, {ort:.2f}x" if ort else f"{int8}, n/a"))  # fmt: skip
        rows.append((f"{app}: throughput ({a['graph']}, batch {a['batch']})", speeds))
        rows.append((f"{app}: {a['metric']}", accuracy))
    return rows


def asr_whisper(r: dict) -> Figures:
    rows = [(f"{key}, {system.replace('_', ' ')}: WER, audio s per s",
             f"{f['wer']:.1f}%, {f['speed']:.2f}")
            for key, systems in r["figures"].items() for system, f in systems.items()]  # fmt: skip
    rows += [(name.replace("_", " "), f"{value:.2f}") for name, value in r["ratios"].items()]
    again = r.get("parts_measured_again", {})
    rows += [(f"{part}: measured again, apart from the full run",
              f"`{m['command']}`, {m['date'][:10]}") for part, m in again.items()]  # fmt: skip
    return rows


def asr_whisper_peers(r: dict) -> Figures:
    q = r["ratios"]
    return [("Whisper tiny.en int8, 15-s window / faster-whisper int8, FSDD clips, greedy",
             f"{q['short_greedy int8_15s_vs_faster_whisper_int8']:.2f}x"),
            ("Whisper tiny.en int8 / faster-whisper int8, 10 min long-form, greedy",
             f"{q['long_greedy int8_vs_faster_whisper_int8 (long-form)']:.2f}x")]  # fmt: skip


def asr_whisper_quick(r: dict) -> Figures:
    return asr_whisper(r)


def asr_finetune(r: dict) -> Figures:
    rows = [(f"tiny.en fine-tuned, unseen speaker {f['speaker']}: WER (untuned), fold time",
             f"{pct(f['wer'])} ({pct(f['untuned_wer'])}), {f['fold_s'] / 60:.1f} min")
            for f in r["folds"]]  # fmt: skip
    goal = f"goal {pct(r['goal_wer'])}"
    return [*rows, ("mean WER fine-tuned (untuned)",
                    f"{pct(r['mean_wer'])} ({pct(r['mean_untuned_wer'])}); {goal}")]  # fmt: skip


def zoo_speed(r: dict) -> Figures:
    return [(f"{m['name']} / the publisher's model ({m['input']})",
             f"{m['ratio']:.2f}x (outputs differ by {m['max_abs_diff']:.1e})")
            for m in r["models"]]  # fmt: skip


HEADLINES: dict[str, Callable[[dict], Figures]] = {
    f.__name__: f
    for f in (
        classify_fashion, trainer_overhead, denoise_set12, denoise_quality, denoise_peers,
        segment_membrane, segment_quality, segment_speed, detect_raccoon,
        detect_scenes, detect_speed, asr_fsdd, asr_speed, clip_fashion, clip_throughput,
        dqn_cartpole, dqn_speed, dqn_pong, diffusion_fashion, diffusion_speed, resume_signals,
        inference_speed, zoo_speed, asr_whisper, asr_whisper_peers, asr_whisper_quick,
        asr_finetune,
    )
}  # fmt: skip

# Headlines that read another result's JSON (a part of its figures).
SOURCES = {"denoise_quality": "denoise_set12", "denoise_peers": "denoise_set12",
           "segment_quality": "segment_membrane", "segment_speed": "segment_membrane",
           "asr_whisper_peers": "asr_whisper"}  # fmt: skip

# The README's table: app, book section, headline result, result against a peer; the row
# shows `lbdl APP train` and docs/images/APP.png (a picture from the tour).
APP_ROWS = [
    ("classify", "6.2", "classify_fashion", "trainer_overhead"),
    ("denoise", "6.1", "denoise_quality", "denoise_peers"),
    ("segment", "6.4", "segment_quality", "segment_speed"),
    ("detect", "6.3", "detect_raccoon", "detect_speed"),
    ("asr", "6.5", "asr_fsdd", "asr_whisper_peers"),
    ("clip", "6.6", "clip_fashion", "clip_throughput"),
    ("dqn", "6.7", "dqn_cartpole", "dqn_speed"),
    ("diffusion", "7.2", "diffusion_fashion", "diffusion_speed"),
]


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def figures(name: str) -> Figures:
    result = load(SOURCES.get(name, name))
    if name in HEADLINES:
        return HEADLINES[name](result)
    return [(k, f"{v:.4g}") for k, v in result.items() if isinstance(v, (int, float))][:6]


def provenance(name: str) -> str:
    result = load(name)
    command = result.get("command") or (result.get("after") or result.get("last_run") or {}).get(
        "command", ""
    )
    date = result.get("date") or (result.get("after") or result.get("last_run") or {}).get(
        "date", ""
    )
    return f"`{command}`, {date[:10]}" if command else date[:10]


def block(name: str) -> str:
    """The figures of one result as a small table, with the command that made them."""
    rows = "".join(f"| {what} | {value} |\n" for what, value in figures(name))
    source = f"[{name}.json](../bench/results/{name}.json)"
    return f"| figure | value |\n|---|---|\n{rows}\nFrom {source} ({provenance(name)}).\n"


def apps_table() -> str:
    lines = ["| app | book | try it | picture | result | against a peer |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for app, section, headline, peer in APP_ROWS:
        result = "; ".join(f"{w}: {v}" for w, v in figures(headline))
        versus = "; ".join(f"{w}: {v}" for w, v in figures(peer))
        picture = DOCS / "images" / f"{app}.png"
        image = f"![{app}](docs/images/{app}.png)" if picture.exists() else ""
        lines.append(f"| [{app}](docs/{app}.md) | {section} | `lbdl {app} train` | {image} | "
                     f"{result} | {versus} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def benchmarks_page() -> str:
    parts = ["# Benchmarks\n",
             "Generated by `python bench/report.py` from `bench/results/*.json`; each figure",
             "links to its JSON (the command, versions, threads and load of the run). These are",
             "CPU figures (2 cores) unless a result says otherwise; ratios compare lbdl with a",
             "peer measured in the same run.\n"]  # fmt: skip
    for path in sorted(RESULTS.glob("*.json")):
        parts.append(f"## {path.stem}\n\n{block(path.stem)}")
    return "\n".join(parts)


def rendered(path: Path, text: str) -> str:
    text = BLOCK.sub(lambda m: m.group(1) + block(m.group(2)) + m.group(4), text)
    if path.name == "README.md":
        text = APPS.sub(lambda m: m.group(1) + apps_table() + m.group(3), text)
    return text


def targets() -> dict[Path, str]:
    """Each generated file and the text it should have."""
    wanted = {DOCS / "benchmarks.md": benchmarks_page()}
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        if path.name != "benchmarks.md":
            wanted[path] = rendered(path, path.read_text())
    return wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check they are up to date.")
    args = parser.parse_args()
    stale = []
    for path, text in targets().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
