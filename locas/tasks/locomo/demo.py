"""LoCoMo's --demo inputs: conversations in the locomo10.json shape, made from the sample text."""
from __future__ import annotations

import json
import random
from pathlib import Path

from locas.tiny import sample_text


def demo_inputs(root: Path) -> dict:
    """Two small conversations under `root`; the flags that point a run at them."""
    path = Path(root) / "locomo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([sample_conversation(f"demo-{i}", seed=i) for i in range(2)]))
    return {"data": str(path)}


def sample_conversation(sample_id: str, seed: int = 0, sessions: int = 3) -> dict:
    """A conversation in the locomo10.json shape, from the sample text: dated sessions of a few turns and
    one question per category (an adversarial one too), so every LoCoMo path runs without the real file."""
    rng = random.Random(seed)
    speakers = ("Ann", "Bob")
    body: dict = {"speaker_a": speakers[0], "speaker_b": speakers[1]}
    said = []
    for s in range(1, sessions + 1):
        body[f"session_{s}_date_time"] = f"{9 + s}:00 am on {s * 3} May, 2023"
        turns = []
        for t in range(4):
            text = sample_text(12, seed=seed * 100 + s * 10 + t).split("\n")[0]
            turns.append({"speaker": speakers[t % 2], "dia_id": f"D{s}:{t + 1}", "text": text})
            said.append((f"D{s}:{t + 1}", text))
        body[f"session_{s}"] = turns
    dia, text = rng.choice(said)
    words = text.split()
    qa = [
        {"question": "What did they talk about first, and last?", "answer": f"{said[0][1].split()[0]}, {words[0]}",
         "category": 1, "evidence": [said[0][0], dia]},
        {"question": "When was the second conversation?", "answer": "6 May 2023", "category": 2, "evidence": ["D2:1"]},
        {"question": "What might Ann like?", "answer": f"{words[-1]}; {words[0]}", "category": 3, "evidence": [dia]},
        {"question": f"What did {speakers[0]} say about the {words[1]}?", "answer": " ".join(words[:4]),
         "category": 4, "evidence": [dia]},
        {"question": "What did Bob paint?", "adversarial_answer": "a lantern", "category": 5, "evidence": []},
    ]
    return {"sample_id": sample_id, "conversation": body, "qa": qa}
