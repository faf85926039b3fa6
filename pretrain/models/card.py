"""The model card: Markdown for a registered version's description and the folder's README.md.

It says what was trained, on what data and for how long, shows the invariance profile (per
transformation: invariance and equivariance R²) and the linear/kNN accuracy, gives the three ways
to load the encoder, and links the run. Facts come from the exported ``config.json`` and from the
MLflow run (its params, tags and metrics), so a card can be written for any registered version.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from pretrain.models.folder import ModelConfig
from pretrain.probes.profile import (
    HEADLINE_LABELS,
    format_headline,
    headline,
    profile_markdown,
    profile_rows,
)

# MLflow stores a model version's description in a VARCHAR(5000) column.
MAX_DESCRIPTION = 5000


@dataclass(frozen=True)
class CardFacts:
    name: str
    version: str
    config: ModelConfig
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    run_name: str | None = None
    run_link: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    total_steps: str | None = None
    intro: str | None = None

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _data_line(config: ModelConfig, params: dict[str, str]) -> str:
    data = config.provenance.get("data")
    if not isinstance(data, dict):  # first-format folders recorded a path string
        return f"`{data}`" if data else "unknown"
    spec = data.get("spec") or {}
    if spec.get("source") == "synth3d":
        s = spec.get("settings") or {}
        text = (f"synthetic 3D objects (`synth3d`: {s.get('classes', '?')} classes x "
                f"{s.get('instances_per_class', '?')} objects x {s.get('views', '?')} views, "
                f"{s.get('size', '?')} px, seed {s.get('seed', '?')})")
    else:
        text = f"`{spec.get('source', '?')}`"
    if data.get("samples"):
        text += f", {data['samples']} samples"
    if data.get("fingerprint"):
        text += f"; fingerprint `{data['fingerprint'][:23]}…`"
    return text


def _length_line(facts: CardFacts) -> str:
    step = facts.config.provenance.get("step")
    p = facts.params
    parts = [f"step {step}" + (f" of {facts.total_steps}" if facts.total_steps else "")]
    if p.get("train.epochs"):
        parts.append(f"{p['train.epochs']} epoch(s)")
    if p.get("data.batch_size"):
        workers = p.get("cluster.num_workers", "1")
        parts.append(f"batch {p['data.batch_size']} per worker x {workers} worker(s)")
    return ", ".join(parts)


def _load_section(facts: CardFacts) -> str:
    c = facts.config
    uri, kind = facts.model_uri, "encoder" if c.num_classes == 0 else "model"
    stem_note = ""
    if c.stem != "timm":
        stem_note = (f"\n\nThis encoder uses the `{c.stem}` stem, which timm cannot build from "
                     "`config.json` alone: with plain timm, apply "
                     "`pretrain.models.encoder.apply_stem(model, \"cifar\")` before loading the weights "
                     "(`load_encoder` does this for you).")
    finetune = "" if c.num_classes else (
        '\nmodel = timm.create_model("local-dir:enc/", pretrained=True, num_classes=10)'
        "  # new head")
    # Paragraphs, not a numbered list: Markdown renderers restart a list after a code block.
    return f"""**With this project** (checks the registry's SHA-256, never unpickles):

```python
from pretrain.hub import load_encoder
{kind} = load_encoder("{uri}")
```

**With plain timm, from a pulled folder** (`pretrain pull {uri} --out enc/`):

```python
import timm
{kind} = timm.create_model("local-dir:enc/", pretrained=True){finetune}
```

**With plain timm, by architecture name:**

```python
{kind} = timm.create_model("{c.architecture}", num_classes={c.num_classes}, """ \
        f"""checkpoint_path="enc/model.safetensors"{_args_text(c)})
```{stem_note}"""


def _args_text(config: ModelConfig) -> str:
    return "".join(f", {k}={json.dumps(v)}" for k, v in config.model_args.items())


def model_card(facts: CardFacts) -> str:
    """The Markdown card (at most :data:`MAX_DESCRIPTION` characters)."""
    c = facts.config
    objective = c.provenance.get("objective") or facts.params.get("objective.name") or "?"
    side = "x".join(str(v) for v in c.input_size[1:])
    what = "encoder" if c.num_classes == 0 else f"classifier ({c.num_classes} classes)"
    run = facts.run_name or facts.run_id or "unknown"
    run_text = f"[{run}]({facts.run_link})" if facts.run_link else f"`{run}`"
    if facts.run_id:
        run_text += f" (run id `{facts.run_id}`)"
    lines = [
        f"# {facts.name}, version {facts.version}",
        "",
        *([facts.intro, ""] if facts.intro else []),
        f"A timm `{c.architecture}` {what} pretrained with **{objective}** by invariant-pretrain: "
        f"{c.num_features or '?'} features, {side} px RGB input, normalised with mean "
        f"{_triple(c.mean)} and std {_triple(c.std)}.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| objective | {objective} |",
        f"| data | {_data_line(c, facts.params)} |",
        f"| length | {_length_line(facts)} |",
        f"| encoder | `{c.architecture}`, stem `{c.stem}`"
        + (f", model_args `{json.dumps(c.model_args)}`" if c.model_args else "") + " |",
        *([f"| test accuracy | {100 * float(c.provenance['test_accuracy']):.2f}% |"]
          if c.provenance.get("test_accuracy") is not None else []),
        f"| run | {run_text} |",
        f"| weights SHA-256 | `{c.sha256}` |",
        "",
    ]
    rows = profile_rows(facts.metrics)
    heads = headline(facts.metrics)
    probe_data = facts.params.get("probes.data")
    where = f" (probe data: `{probe_data}`)" if probe_data else ""
    if heads:
        lines += [f"## Accuracy{where}", "", "| probe | value |", "|---|---:|"]
        lines += [f"| {HEADLINE_LABELS[k]} | {format_headline(v, k)} |" for k, v in heads.items()]
        lines.append("")
    if rows:
        lines += [
            f"## Invariance profile{where}", "",
            "Invariance: 1 = the representation ignores the transformation, 0 = it moves as far "
            "as swapping the image. Equivariance R²: how well the transformation's parameters "
            "can be read back from [f(x), f(Tx)] (0 or below: not at all).", "",
            profile_markdown(rows), ""]
    if not heads and not rows:
        lines += ["## Probes", "", "No probe results were logged for this run.", ""]
    lines += ["## Load it", "", _load_section(facts), ""]
    card = "\n".join(lines)
    if len(card) > MAX_DESCRIPTION:
        card = card[: MAX_DESCRIPTION - 40].rsplit("\n", 1)[0] + "\n\n(card truncated)\n"
    return card


def _triple(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values if not math.isnan(v)) + ")"
