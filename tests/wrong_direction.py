"""A pytest plugin that turns one repair around, to show that the outcome tests notice (issue 27).

    REALIGN_WRONG_DIRECTION=dpo python -m pytest -p wrong_direction tests/test_repair_outcomes.py -k dpo

Never loaded by the suite itself. Each version below does the repair's work in the wrong direction:
- dpo:    chosen and rejected swapped (the finetune's misaligned answers preferred);
- merge:  α → 2 − α, i.e. past the finetune, away from the base (merge, ties, merge+steer);
- steer:  the chosen direction added to the weights instead of removed;
- mix:    the answers mixed in are the finetune's misaligned ones, not the base's aligned ones;
- freeze: the layer ranking reversed (the layers that explain the least are restored);
- harden: aligned and misaligned answers swapped, so the adversary pushes toward the aligned
          answers and the LoRA learns to prefer the misaligned ones under it.
"""

from __future__ import annotations

import os


def _dpo(mp) -> None:
    from realign.repairs import dpo

    real = dpo.realignment_pairs

    def swapped(state, p):
        rows, n, source = real(state, p)
        return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows], n, source

    mp.setattr(dpo, "realignment_pairs", swapped)


def _merge(mp) -> None:
    from realign.model_io import adapter_toggle
    from realign.repairs import merge

    real = merge.set_alpha
    mp.setattr(merge, "set_alpha", lambda model, base, deltas, alpha: real(model, base, deltas, 2.0 - alpha))
    real_scale = adapter_toggle.scale_adapter     # a LoRA finetune kept unmerged: its adapter is scaled
    mp.setattr(adapter_toggle, "scale_adapter", lambda model, up, alpha: real_scale(model, up, 2.0 - alpha))


def _steer(mp) -> None:
    from realign.repairs import steer

    # the search still tries removals (turned around too, it would simply keep whichever amplified
    # layer happens to lower the log-odds); what is baked into the weights adds the direction
    real_edit = steer.orthogonalize
    mp.setattr(steer, "orthogonalize", lambda model, direction, scale=1.0: real_edit(model, direction, -scale))


def _mix(mp) -> None:
    from realign.repairs import mix
    from realign.repairs.probes import Probes

    real = mix.build_probes

    def finetune_answers_as_aligned(state, **kw):
        p = real(state, **kw)
        # the finetune's misaligned answers stand where the base's aligned ones were
        flipped = [[None if m is None else not m for m in row] for row in p.finetune_misaligned]
        return Probes(p.conversations, p.finetune_answers, p.base_answers, flipped, p.base_misaligned)

    mp.setattr(mix, "build_probes", finetune_answers_as_aligned)


def _freeze(mp) -> None:
    from realign.repairs import freeze

    real = freeze._score
    mp.setattr(freeze, "_score", lambda drop, rise: -real(drop, rise))


def _harden(mp) -> None:
    from realign.repairs import harden

    real = harden.preference_triples

    def swapped(state, p):
        triples, counts = real(state, p)
        return [(prompt, bad, good) for prompt, good, bad in triples], counts

    mp.setattr(harden, "preference_triples", swapped)


FLIPS = {"dpo": _dpo, "merge": _merge, "steer": _steer, "mix": _mix, "freeze": _freeze, "harden": _harden}


def pytest_configure(config) -> None:
    import pytest

    name = os.environ.get("REALIGN_WRONG_DIRECTION")
    if name not in FLIPS:
        raise pytest.UsageError(f"REALIGN_WRONG_DIRECTION must be one of {', '.join(FLIPS)}, not {name!r}")
    mp = pytest.MonkeyPatch()
    FLIPS[name](mp)
    config.add_cleanup(mp.undo)
    print(f"wrong_direction: {name} turned around")
