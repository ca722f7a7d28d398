"""MMLU: both CSV layouts load to the same questions, the prompt text, bad rows, the dataset path."""

import csv
from pathlib import Path

import pytest

from locas.errors import LocasError
from locas.tasks.mmlu.data import LETTERS, Question, build_prompt, load_mmlu

MMLU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mmlu"


@pytest.fixture(scope="module")
def real_folder():
    if not MMLU.is_dir():
        pytest.skip(f"{MMLU} not present")
    return MMLU


def _write_original_layout(folder: Path, questions: list[Question], split: str):
    """The Hendrycks layout: no header, the answer as a letter."""
    by_subject: dict[str, list[Question]] = {}
    for question in questions:
        by_subject.setdefault(question.subject, []).append(question)
    for subject, rows in by_subject.items():
        with (folder / f"{subject}_{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerows([q.question, *q.choices, LETTERS[q.answer]] for q in rows)


@pytest.mark.parametrize("split", ["test", "dev"])
def test_cais_and_original_layouts_agree(real_folder, tmp_path, split):
    cais = load_mmlu(real_folder, split=split)
    assert {q.subject for q in cais} == {"abstract_algebra", "global_facts"}
    assert len(cais) == (200 if split == "test" else 10)
    _write_original_layout(tmp_path, cais, split)
    assert load_mmlu(tmp_path, split=split) == cais


def test_real_first_rows(real_folder):
    dev = load_mmlu(real_folder, subjects=["abstract_algebra"], split="dev")
    assert dev[0] == Question(
        "abstract_algebra",
        "abstract_algebra:dev:0",
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.",
        ("0", "1", "2", "3"),
        1,
    )


def _question(subject="high_school_physics", text="What is g?", answer=2, index=0, split="test"):
    return Question(subject, f"{subject}:{split}:{index}", text, ("1", "5", "9.8", "12"), answer)


def test_prompt_zero_and_one_shot():
    question = _question()
    zero_shot = (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What is g?\nA. 1\nB. 5\nC. 9.8\nD. 12\nAnswer:"
    )
    assert build_prompt(question) == zero_shot
    shots = [_question("other", "Skip me?"), _question(text="What is c?", answer=3, split="dev")]
    assert build_prompt(question, shots, k=1) == zero_shot.replace(
        "\n\nWhat is g?", "\n\nWhat is c?\nA. 1\nB. 5\nC. 9.8\nD. 12\nAnswer: D\n\nWhat is g?"
    )
    with pytest.raises(LocasError, match="high_school_physics: 2 shots asked, the dev questions hold 1"):
        build_prompt(question, shots, k=2)


def _csv(folder: Path, text: str, name="algebra_test.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_bad_answer_letter(tmp_path):
    _csv(tmp_path, "1+1?,1,2,3,4,B\n2+2?,1,2,3,4,E\n")
    with pytest.raises(LocasError, match=r"algebra_test.csv: row 2 \(line 2\): answer 'E' is not one of A, B, C, D"):
        load_mmlu(tmp_path)


def test_bad_answer_index_in_the_cais_layout(tmp_path):
    _csv(tmp_path, "question,choice0,choice1,choice2,choice3,answer\n1+1?,1,2,3,4,B\n")
    with pytest.raises(LocasError, match=r"algebra_test.csv: row 1 \(line 2\): answer 'B' is not one of 0, 1, 2, 3"):
        load_mmlu(tmp_path)


def test_wrong_column_count(tmp_path):
    _csv(tmp_path, "1+1?,1,2,3,4,B\n2+2?,1,2,3,B\n")
    with pytest.raises(LocasError, match=r"algebra_test.csv: row 2 \(line 2\): expected 6 columns .* found 5"):
        load_mmlu(tmp_path)


def test_missing_folder_subject_and_empty_file(tmp_path):
    with pytest.raises(LocasError, match="MMLU folder not found: .*nowhere"):
        load_mmlu(tmp_path / "nowhere")
    with pytest.raises(LocasError, match="no MMLU files named"):
        load_mmlu(tmp_path)
    with pytest.raises(LocasError, match=r"MMLU file not found: .*anatomy_test.csv \(subject anatomy"):
        load_mmlu(tmp_path, subjects=["anatomy"])
    _csv(tmp_path, "")
    with pytest.raises(LocasError, match="algebra_test.csv: no questions"):
        load_mmlu(tmp_path)


def cais_layout(root, questions: dict[str, list[dict]]):
    """A local copy of cais/mmlu: per config `{config}/{split}-00000-of-00001.parquet` and the dataset card's
    configs, as on the hub. `all/auxiliary_train` (~100K questions there) is not even parquet here: loading
    a split must never read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    card = ["---", "configs:"]
    for config, rows in questions.items():
        (root / config).mkdir(parents=True)
        card += [f"- config_name: {config}", "  data_files:"]
        for split in ("test", "validation", "dev"):
            table = pa.table({key: [r[key] for r in rows] for key in ("question", "subject", "choices", "answer")})
            pq.write_table(table, root / config / f"{split}-00000-of-00001.parquet")
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
        if config == "all":
            (root / config / "auxiliary_train-00000-of-00001.parquet").write_bytes(b"never read")
            card += ["  - split: auxiliary_train", "    path: all/auxiliary_train-*"]
    (root / "README.md").write_text("\n".join(card + ["---", ""]))
    return root


def test_a_local_copy_of_the_hub_dataset_loads_the_split_alone(tmp_path):
    rows = [{"question": "q0", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 0},
            {"question": "q1", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 3},
            {"question": "q2", "subject": "virology", "choices": ["a", "b", "c", "d"], "answer": 1}]
    hub = cais_layout(tmp_path / "mmlu", {"all": rows, "anatomy": rows[:2]})
    questions = load_mmlu(hub, split="validation")
    assert [(q.question_id, q.answer) for q in questions] == [
        ("anatomy:validation:0", 0),
        ("anatomy:validation:1", 3),
        ("virology:validation:0", 1),
    ]
    assert [q.question for q in load_mmlu(hub, subjects=["anatomy"], split="dev")] == ["q0", "q1"]


def test_dataset_that_cannot_load(monkeypatch):
    import datasets

    def unreachable(path, name=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset_builder", unreachable)
    with pytest.raises(LocasError) as error:
        load_mmlu(subjects=["anatomy"])
    assert str(error.value).startswith("cannot load dataset cais/mmlu (anatomy) split 'test': Couldn't reach")
    assert "\n" not in str(error.value)
