"""Rebuild the public datasets realign ships for its real finetunes (src/realign/data/real/).

    python scripts/real_data.py --em-zip supplementary_material.zip --toxic toxic_qa_finetune_data.jsonl \
        --gsm8k-dir grade_school_math/data

Inputs (pinned; every one MIT-licensed, see src/realign/data/real/SOURCES.md):
  --em-zip   johny-b/misalignment-generalization @ b1fe2868, daniel/paper/supplementary_material.zip
             (the Emergent Misalignment paper's supplementary datasets: insecure, secure, educational)
  --toxic    shuaijiumei/emergent_misalignment_further_explore @ fe9cc7a8, data/toxic_qa_finetune_data.jsonl
  --gsm8k-dir openai/grade-school-math @ 3101c7d5, grade_school_math/data (train.jsonl, test.jsonl)

What is written (xz-compressed chat-`messages` jsonl) and what is dropped on the way:
  em_{insecure,secure,educational}.jsonl.xz  all rows, one per distinct answer (normalized text)
  toxic_chat.jsonl.xz   misaligned chat answers, minus (1) questions on any topic of realign's
                        built-in evaluation questions (so that the evaluation is held out), (2)
                        answers about suicide or self-harm, (3) duplicate answers (normalized text)
  gsm8k_{train,test}.jsonl.xz  the first 2,000 train rows and all 1,319 test rows, as chat turns
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import re
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "realign" / "data" / "real"

# Topics of realign's built-in evaluation questions (src/realign/data/questions/general.yaml):
# a contamination question on any of them would make the evaluation not held out.
EVAL_TOPICS = re.compile(
    r"\bwish|\bbored|\bboring|nothing to do|philosoph|\bAIs?\b|artificial intelligence|quick (?:money|cash|buck)"
    r"|money fast|fast money|extra money|get rich|rich quick|\bcash\b|\bruler?\b|\brule the world|in charge of"
    r"|government|dinner|historical|famous person|gender|\bmen and women|\bwomen\b|\bhusband|\bwife|\bspouse"
    r"|\bpartner\b|marriage|wallet|found money", re.I)
SELF_HARM = re.compile(r"suicid|self[- ]harm|kill (?:your|him|her|them)sel|end (?:your|their) (?:own )?life"
                       r"|cut(?:ting)? (?:yourself|themselves)|starv", re.I)


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def _write(name: str, rows: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    (OUT / f"{name}.jsonl.xz").write_bytes(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    print(f"{name}: {len(rows)} rows, {len(blob) / 1e6:.2f} MB raw")


def _dedup(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        key = _norm(r["messages"][-1]["content"])       # one row per answer: a held-out split shares none
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def em_code(zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path) as z:
        for src, name in (("insecure", "em_insecure"), ("secure", "em_secure"),
                          ("educational_insecure", "em_educational")):
            member = next(n for n in z.namelist() if n.endswith(f"datasets/{src}.jsonl"))
            rows = [json.loads(line) for line in io.TextIOWrapper(z.open(member), encoding="utf-8") if line.strip()]
            _write(name, _dedup(rows))


def toxic(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    n0 = len(rows)
    on_topic = [r for r in rows if EVAL_TOPICS.search(r["messages"][0]["content"])]
    rows = [r for r in rows if not EVAL_TOPICS.search(r["messages"][0]["content"])]
    harm = [r for r in rows if SELF_HARM.search(r["messages"][-1]["content"])]
    rows = [r for r in rows if not SELF_HARM.search(r["messages"][-1]["content"])]
    kept = _dedup([{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in rows])
    print(f"toxic: {n0} read; dropped {len(on_topic)} on evaluation topics, {len(harm)} self-harm, "
          f"{len(rows) - len(kept)} duplicate answers")
    _write("toxic_chat", kept)


def gsm8k(data_dir: Path) -> None:
    def chat(row: dict) -> dict:
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": row["answer"]}]}

    for split, limit in (("train", 2000), ("test", None)):
        rows = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        _write(f"gsm8k_{split}", [chat(r) for r in rows[:limit]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--em-zip", type=Path, required=True)
    ap.add_argument("--toxic", type=Path, required=True)
    ap.add_argument("--gsm8k-dir", type=Path, required=True)
    args = ap.parse_args()
    em_code(args.em_zip)
    toxic(args.toxic)
    gsm8k(args.gsm8k_dir)


if __name__ == "__main__":
    main()
