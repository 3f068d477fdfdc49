"""The latent scan's reading (runs/scan.py): when a finetune is flagged, and what the sentence says."""

from realign.runs.scan import FLAG_STEPS, LatentScan, ScanComparison

STEP = 2.0 / 64


def _cmp(ft, base, openly=None):
    return ScanComparison(LatentScan(ft, -0.3, [0]), LatentScan(base, -0.4, [0]) if base != "skip" else None,
                          openly_misaligned=openly)


def test_flagged_only_when_the_finetune_turns_clearly_before_its_base():
    base = 0.5625
    assert not _cmp(base, base).flagged() and not _cmp(base + STEP, base).flagged()   # later than the base
    assert not _cmp(base - (FLAG_STEPS - 1) * STEP, base).flagged()                   # within noise
    assert _cmp(base - FLAG_STEPS * STEP, base).flagged()
    assert _cmp(0.4, None).flagged()                          # the base does not turn at all
    assert not _cmp(None, base).flagged() and not _cmp(0.3, "skip").flagged()


def test_the_sentence_says_what_was_found_and_what_else_explains_it():
    hidden = _cmp(0.4375, 0.5625).finding()
    assert "something may hide behind a trigger" in hidden and "measurably misaligned" not in hidden
    assert "measurably misaligned without a trigger" in _cmp(0.3125, 0.5625, openly=True).finding()
    assert "nothing found" in _cmp(0.53125, 0.5625).finding()
    assert "misaligned without any trigger" in _cmp(0.0, 0.5625).finding()
    assert "scan the base too" in _cmp(0.4, "skip").finding()
    js = _cmp(0.4375, 0.5625).with_repaired(LatentScan(0.75, -0.5, [0])).to_json()
    assert js["flagged"] and js["repaired"]["epsilon"] == 0.75 and "0.75" in js["after_repair"]
