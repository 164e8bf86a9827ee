"""DatasetTask: local Parquet / CSV / JSONL through 🤗 datasets, with column mapping, splits, a seeded held-out
validation split, chat-message prompts, and one-line errors that name the file and the column or line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from epr_lightning.cli import main
from epr_lightning.tasks import DatasetTask

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def math_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"uid": f"q{i}", "question": f"What is {i} + 1?", "solution": i + 1, "level": i % 3}
        for i in range(start, start + n)
    ]


def test_parquet_with_column_mapping_and_a_validation_split(tmp_path: Path) -> None:
    train = write_parquet(tmp_path / "train.parquet", math_rows(10))
    val = write_parquet(tmp_path / "val.parquet", math_rows(3, start=100))
    task = DatasetTask(
        data_files={"train": str(train), "validation": str(val)},
        val_split="validation",
        prompt_column="question",
        answer_column="solution",
        id_column="uid",
    )
    examples = task.examples("train")
    assert [e.id for e in examples] == [f"q{i}" for i in range(10)]
    first = examples[3]
    assert (first.prompt, first.answer, first.messages) == ("What is 3 + 1?", "4", None)
    assert first.meta == {"uid": "q3", "solution": 4, "level": 0}  # every column but the prompt, by name
    assert [e.answer for e in task.examples("val")] == ["101", "102", "103"]


def test_held_out_validation_is_seeded_fixed_and_disjoint(tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "d.parquet", math_rows(40))
    kwargs = dict(prompt_column="question", answer_column="solution", id_column="uid", val_fraction=0.25)

    def split(seed: int) -> tuple[list[str], list[str]]:
        task = DatasetTask(str(data), seed=seed, **kwargs)
        return [e.id for e in task.examples("train")], [e.id for e in task.examples("val")]

    train, val = split(0)
    assert len(val) == 10 and len(train) == 30
    assert set(train).isdisjoint(val) and set(train) | set(val) == {f"q{i}" for i in range(40)}
    assert split(0) == (train, val)  # the same files and seed: the same split, every time
    assert split(1)[1] != val  # another seed holds out other rows
    assert val != [f"q{i}" for i in range(30, 40)]  # not simply the tail of the file
    sized = DatasetTask(str(data), prompt_column="question", answer_column="solution", val_size=7)
    assert len(sized.examples("val")) == 7


def test_chat_message_prompts_csv_and_prompt_templates(tmp_path: Path) -> None:
    chat = [
        {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
        {"id": "c2", "messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                                  {"role": "user", "content": "C?"}]},
    ]  # fmt: skip
    data = write_parquet(tmp_path / "chat.parquet", chat)
    examples = DatasetTask(str(data), prompt_column="messages", answer_column=None, id_column="id").examples(
        "train"
    )
    assert examples[0].messages == chat[0]["messages"] and examples[0].prompt == "Hi?"
    assert examples[1].messages == chat[1]["messages"] and examples[1].prompt == "C?"
    csv = tmp_path / "p.csv"
    csv.write_text('problem,solution\n"What is 1/2 of 3, exactly?",1.5\nWhat is 2 + 2?,4\n')
    task = DatasetTask(str(csv), prompt_template="Q: {problem}\nA:", answer_column="solution")
    assert [(e.prompt, e.answer) for e in task.examples("train")] == [
        ("Q: What is 1/2 of 3, exactly?\nA:", "1.5"),
        ("Q: What is 2 + 2?\nA:", "4.0"),
    ]


def run(tmp_path: Path, capsys: pytest.CaptureFixture, *task_args: str) -> tuple[int, str]:
    code = 0
    try:
        main([
            "fit", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--data.init_args.batches_per_epoch", "1",
            "--data.init_args.task", "epr_lightning.tasks.DatasetTask", *task_args,
        ])  # fmt: skip
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("epr-lightning: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "Failed to" not in err, err[-2000:]  # the datasets library's own log of the same parse error
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_files_are_one_line_errors_naming_file_column_or_line(tmp_path: Path, capsys) -> None:
    data = write_parquet(tmp_path / "d.parquet", math_rows(4))
    code, err = run(tmp_path, capsys, "--data.init_args.task.init_args.data_files", str(data))
    one_line(code, err, "no column 'prompt' (the prompt_column)", "'question'", str(data))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "answer": 1}) + "\n" + '{"prompt": "b", "answer": \n')
    code, err = run(tmp_path, capsys, "--data.init_args.task.init_args.data_files", str(bad))
    one_line(code, err, f"{bad}:2: malformed JSON")
    csv = tmp_path / "bad.csv"
    csv.write_text("prompt,answer\nWhat is 1 + 1?,2\nWhat is (1, 2) + 1?,3\n")  # unquoted commas on line 3
    code, err = run(tmp_path, capsys, "--data.init_args.task.init_args.data_files", str(csv))
    one_line(code, err, f"{csv}: not readable as csv", "line 3")
    code, err = run(
        tmp_path, capsys, "--data.init_args.task.init_args.data_files", str(tmp_path / "nope.parquet")
    )
    one_line(code, err, "FileNotFoundError", "nope.parquet")


def test_a_parquet_chat_dataset_trains_end_to_end(tmp_path: Path, capsys) -> None:
    rows = [
        {"key": f"k{i}", "chat": [{"role": "user", "content": f"Say {i}."}], "target": str(i)}
        for i in range(12)
    ]
    data = write_parquet(tmp_path / "chat.parquet", rows)
    code, err = run(
        tmp_path, capsys,
        "--data.init_args.task.init_args.data_files", str(data),
        "--data.init_args.task.init_args.prompt_column", "chat",
        "--data.init_args.task.init_args.answer_column", "target",
        "--data.init_args.task.init_args.id_column", "key",
        "--data.init_args.task.init_args.val_size", "4",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    state = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["epr"]["iteration"] == 1
