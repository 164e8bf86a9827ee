"""Built-in tasks: extraction, evaluator, rewards on hand-checked answers, determinism, JSONL errors, configs."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from epr_lightning.tasks import (
    ArithmeticTask,
    CharacterTask,
    CountdownReward,
    CountdownTask,
    DatasetTask,
    ExactAnswerReward,
    Example,
    ExpressionError,
    NumberPropertyReward,
    NumbersWithPropertyTask,
    Task,
    canonical_expression,
    canonical_number,
    extract_final_answer,
    extract_number,
    parse_expression,
    safe_eval,
)
from epr_lightning.tasks.expressions import ExpressionLimits, numbers_in
from epr_lightning.tasks.generated import GeneratedTask
from epr_lightning.tasks.property_numbers import has_property

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", "12"),
        (" 12.0 ", "12"),
        ("1,200", "1200"),
        ("-0", "0"),
        ("+7", "7"),
        ("007", "7"),
        ("3.1400", "3.14"),
        ("$5", "5"),
        ("12.", "12"),
        (".5", "0.5"),
        ("١٢", "12"),
        ("−3", "-3"),
        ("twelve", None),
        ("1 2", None),
        ("", None),
        (None, None),
        ("1.2.3", None),
        ("9" * 100, None),
    ],
)
def test_canonical_number(text, expected):
    assert canonical_number(text) == expected


@pytest.mark.parametrize(
    ("completion", "value", "source"),
    [
        ("7 + 5 = 12. Answer: 12", "12", "tagged"),
        ("answer: 12.0\nDone.", "12", "tagged"),
        ("Answer: **1,234**", "1234", "tagged"),
        ("Answer: 12 apples", "12", "tagged"),
        ("Answer: 3 4", "3", "tagged"),  # two numbers: the first one after the tag
        ("Answer: 3\nwait, Answer: 4", "4", "tagged"),  # the last tag wins
        ("so \\boxed{42} and Answer: 7", "42", "boxed"),  # boxed beats the tag
        ("\\boxed{\\frac{1}{2}} hmm 5", "1", "boxed"),  # first number inside a non-number box
        ("I think 3 then 5", "5", "fallback"),  # last-number fallback
        ("no digits here", None, None),
        ("Answer: none", None, None),
    ],
)
def test_extract_number(completion, value, source):
    assert extract_number(completion) == (value, source)


def test_extract_final_answer_unclosed_box_falls_back_to_tag():
    found = extract_final_answer("\\boxed{12 Answer: 13")
    assert (found.text, found.source) == ("13", "tagged")


# ------------------------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1+2*3", Fraction(7)),  # precedence: 1 + 6
        ("(1+2)*3", Fraction(9)),
        ("8/3", Fraction(8, 3)),  # exact, no float rounding
        ("10-4-3", Fraction(3)),  # left-associative: (10-4)-3
        ("24/4/2", Fraction(3)),  # (24/4)/2
        ("2 × 3 ÷ 4 − 1", Fraction(1, 2)),  # unicode operators: 6/4 - 1
        ("-(2+3)*-2", Fraction(10)),
    ],
)
def test_safe_eval_values(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "1/0",
        "2**3",
        "9**9**9",
        "1+",
        "(1+2",
        "1+2)",
        "abc",
        "__import__('os')",
        "1e5",
        "1.5+1",
        "(" * 40 + "1" + ")" * 40,
        "9" * 20,
        "999999999999*999999999999*999999999999",
    ],
)
def test_safe_eval_rejects(expr):
    with pytest.raises(ExpressionError):
        safe_eval(expr)


def test_unary_minus_can_be_disallowed():
    with pytest.raises(ExpressionError):
        safe_eval("-3+5", ExpressionLimits(allow_unary_minus=False))


def test_canonical_expression_is_commutative_and_value_preserving():
    a = canonical_expression(parse_expression("7 + (5+3)"))
    b = canonical_expression(parse_expression("3+5+7"))
    assert a == b == "3+5+7"
    assert canonical_expression(parse_expression("3 * 5"), commutative=False) == "3*5"
    assert canonical_expression(parse_expression("5*3")) == "3*5"
    for expr in ["7-(5-3)", "8/(4/2)", "(2+3)*(4-1)", "12/(2*3)", "2-(3+4)", "-(2+3)*4", "9-3-(2-1)"]:
        node = parse_expression(expr)
        canon = canonical_expression(node)
        assert safe_eval(canon) == safe_eval(expr), (expr, canon)
        assert sorted(numbers_in(parse_expression(canon))) == sorted(numbers_in(node))
    # additive / multiplicative chains: sorted positive terms, then sorted subtracted terms (divisors)
    assert canonical_expression(parse_expression("7-(5-3)")) == "3+7-5"
    assert canonical_expression(parse_expression("8/(4/2)")) == "2*8/4"
    assert canonical_expression(parse_expression("7-(5-3)"), commutative=False) == "7-(5-3)"
    assert canonical_expression(parse_expression("(7-5)-3"), commutative=False) == "7-5-3"


# -------------------------------------------------------------------------------------------- rewards


def test_exact_answer_reward_table():
    ex = Example(id="a", prompt="What is 7 + 5?", answer="12")
    reward = ExactAnswerReward()
    assert reward(ex, "7 + 5 = 12. Answer: 12") == 1.0
    assert reward(ex, "\\boxed{12.0}") == 1.0
    assert reward(ex, "Answer: 13") == 0.0
    assert reward(ex, "It is 12") == 0.0  # correct but untagged: fallback_credit = 0
    assert reward(ex, "garbled ###") == 0.0
    shaped = ExactAnswerReward(format_bonus=0.1, fallback_credit=0.5)
    assert shaped(ex, "Answer: 13") == 0.1
    assert shaped(ex, "It is 12") == 0.5
    assert shaped(ex, "It is 13") == 0.0
    assert shaped(ex, "Answer: 12") == 1.0
    assert reward.extract_answer("Answer: 1,200.50") == "1200.5"


def test_exact_answer_reward_text_reference():
    ex = Example(id="t", prompt="Capital of France?", answer="Paris")
    reward = ExactAnswerReward()
    assert reward(ex, "Answer: paris.") == 1.0
    assert reward(ex, "Answer: Lyon") == 0.0
    assert reward.extract_answer("Answer:  New   York ") == "new york"


@pytest.mark.parametrize("bad", [{"format_bonus": 1.0}, {"format_bonus": -0.1}, {"fallback_credit": 1.5}])
def test_reward_args_validated(bad):
    with pytest.raises(ValueError):
        ExactAnswerReward(**bad)


def test_countdown_reward_table():
    ex = Example(id="c", prompt="", answer="8", meta={"numbers": [3, 5, 7], "target": 8})
    reward = CountdownReward()
    assert reward(ex, "Answer: 3 + 5") == 1.0
    assert reward(ex, "Answer: (5 + 3) = 8") == 1.0
    assert reward(ex, "Answer: $7 \\times 5 - 3 \\cdot 9$") == 0.0  # 9 is not offered
    assert reward(ex, "Answer: 7 + 3 - 2") == 0.0  # 2 not offered
    assert reward(ex, "Answer: 5 + 3 + 0") == 0.0  # 0 not offered
    assert reward(ex, "Answer: 3 + 3 + 2") == 0.0  # 3 used twice
    assert reward(ex, "Answer: 7 - 5 + 3 * 2") == 0.0  # 2 not offered (value 8)
    assert reward(ex, "Answer: 5 * 3 - 7") == 1.0  # 15 - 7 = 8
    assert reward(ex, "Answer: 8") == 0.0  # 8 is not offered
    assert reward(ex, "Answer: 2**3") == 0.0
    assert reward(ex, "3 + 5") == 0.0  # untagged → fallback_credit 0
    assert CountdownReward(fallback_credit=0.5)(ex, "work:\n3 + 5\n") == 0.5
    assert CountdownReward(format_bonus=0.1)(ex, "Answer: 3 + 7") == 0.1
    assert reward.extract_answer("Answer: 5 + 3") == reward.extract_answer("\\boxed{3+5}") == "3+5"
    assert CountdownReward(commutative=False).extract_answer("Answer: 5 + 3") == "5+3"
    use_all = Example(
        id="u", prompt="", answer="8", meta={"numbers": [3, 5, 7], "target": 8, "use_all": True}
    )
    assert reward(use_all, "Answer: 3 + 5") == 0.0
    assert reward(use_all, "Answer: 7 - 5 + 3") == 0.0  # = 5
    assert reward(use_all, "Answer: (7 + 5) - 3 - 1") == 0.0  # 1 not offered
    assert reward(use_all, "Answer: 3 * 5 - 7") == 1.0


def test_number_property_reward_table():
    ex = Example(id="n", prompt="", meta={"low": 1, "high": 50, "property": "divisible", "divisor": 7})
    reward = NumberPropertyReward()
    assert [reward(ex, f"Answer: {n}") for n in (7, 14, 49, 50, 56, 0, -7)] == [1, 1, 1, 0, 0, 0, 0]
    assert reward(ex, "Answer: 14.5") == 0.0
    assert reward(ex, "14") == 0.0
    assert reward(ex, "Answer: " + "7" * 40) == 0.0
    assert has_property(97, "prime") and not has_property(91, "prime") and has_property(49, "square")


# -------------------------------------------------------------------------------------------- tasks


def test_arithmetic_task_answers_and_determinism():
    task = ArithmeticTask(num_train=50, num_val=10, ops="+-*/", num_operands=3, seed=3)
    train = task.examples("train")
    assert len(train) == 50 and len(task.examples("val")) == 10
    for ex in train:
        assert safe_eval(ex.meta["expression"]) == int(ex.answer)
        assert f"What is {ex.meta['expression']}?" in ex.prompt and "Answer:" in ex.prompt
        assert task.reward(ex, f"Answer: {ex.answer}") == 1.0
        assert task.reward(ex, f"Answer: {int(ex.answer) + 1}") == 0.0
    again = ArithmeticTask(num_train=50, num_val=10, ops="+-*/", num_operands=3, seed=3)
    assert [e.prompt for e in again.examples("train")] == [e.prompt for e in train]
    other = ArithmeticTask(num_train=50, num_val=10, ops="+-*/", num_operands=3, seed=4)
    assert [e.prompt for e in other.examples("train")] != [e.prompt for e in train]
    val_exprs = {e.meta["expression"] for e in task.examples("val")}
    assert not val_exprs & {e.meta["expression"] for e in train}


def test_arithmetic_word_problems():
    task = ArithmeticTask(num_train=40, num_val=0, ops="+-*/", word_problems=True)
    for ex in task.examples("train"):
        assert int(ex.answer) >= 0 and "What is" not in ex.prompt
        assert safe_eval(ex.meta["expression"]) == int(ex.answer)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ops": "^"},
        {"ops": ""},
        {"min_value": 5, "max_value": 1},
        {"num_operands": 1},
        {"word_problems": True, "num_operands": 3},
        {"num_train": -1},
    ],
)
def test_arithmetic_bad_args(kwargs):
    with pytest.raises(ValueError):
        ArithmeticTask(**kwargs)


def test_countdown_instances_are_solvable_and_deterministic():
    task = CountdownTask(num_train=60, num_val=5, seed=1)
    for ex in task.examples("train"):
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert str(target) in ex.prompt and all(str(n) in ex.prompt for n in numbers)
        assert 1 <= target <= 100 and target not in numbers
        witness = ex.meta["witness"]
        assert safe_eval(witness) == target
        assert task.reward(ex, f"Let me think.\nAnswer: {witness}") == 1.0
    assert [e.meta for e in CountdownTask(num_train=60, num_val=5, seed=1).examples("train")] == [
        e.meta for e in task.examples("train")
    ]
    assert task.examples("val")[0].id == "countdown-val-0"


def test_countdown_use_all_witness_uses_every_number():
    task = CountdownTask(num_train=20, num_val=0, num_numbers=3, use_all=True)
    for ex in task.examples("train"):
        assert sorted(numbers_in(parse_expression(ex.meta["witness"]))) == sorted(ex.meta["numbers"])
        assert task.reward(ex, f"Answer: {ex.meta['witness']}") == 1.0


def test_numbers_with_property_task_has_enough_solutions():
    task = NumbersWithPropertyTask(num_train=40, num_val=4, min_solutions=3, seed=2)
    for ex in task.examples("train"):
        m = ex.meta
        valid = [
            n for n in range(m["low"], m["high"] + 1) if has_property(n, m["property"], m.get("divisor"))
        ]
        assert len(valid) == m["num_solutions"] >= 3
        assert all(task.reward(ex, f"Answer: {n}") == 1.0 for n in valid)
        assert task.reward(ex, f"Answer: {m['high'] + 1}") == 0.0
    with pytest.raises(ValueError):
        NumbersWithPropertyTask(properties=["odd"])


def test_numbers_with_property_divisors_list():
    task = NumbersWithPropertyTask(num_train=60, num_val=0, properties=["divisible"], divisors=[2, 5, 10])
    drawn = {ex.meta["divisor"] for ex in task.examples("train")}
    assert drawn == {2, 5, 10}
    with pytest.raises(ValueError, match="divisors"):
        NumbersWithPropertyTask(divisors=[1, 5])


# ------------------------------------------------------------------------------------ generated tasks


@pytest.mark.parametrize("cls", [ArithmeticTask, CountdownTask, NumbersWithPropertyTask, CharacterTask])
def test_generated_tasks_share_counts_seed_splits_and_checks(cls):
    task = cls(num_train=6, num_val=3, seed=5, system_prompt="Be brief.")
    assert isinstance(task, GeneratedTask) and task.system_prompt == "Be brief."
    train, val = task.examples("train"), task.examples("val")
    assert (len(train), len(val)) == (6, 3)
    assert task.examples("train") == train == cls(num_train=6, num_val=3, seed=5).examples("train")
    assert cls(num_train=6, num_val=3, seed=6).examples("train") != train  # the seed draws other examples
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        task.examples("test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_train/num_val must be ≥ 0"):
        cls(num_train=-1, num_val=3, seed=5)


# -------------------------------------------------------------------------------------------- JSONL
# (read by DatasetTask, which replaced JSONLTask)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reads_fields_and_holds_out_a_seeded_split(tmp_path):
    lines = [json.dumps({"q": f"What is {i} + 1?", "a": i + 1, "src": "gen"}) for i in range(10)]
    path = _write(tmp_path / "d.jsonl", lines[:5] + [""] + lines[5:])  # a blank line is ignored
    task = DatasetTask(str(path), prompt_column="q", answer_column="a", val_fraction=0.2)
    train, val = task.examples("train"), task.examples("val")
    assert len(train) == 8 and len(val) == 2
    every = sorted(train + val, key=lambda e: int(e.id.split(":")[1]))
    assert every[0] == Example(id="train:0", prompt="What is 0 + 1?", answer="1", meta={"a": 1, "src": "gen"})
    assert [e.answer for e in every] == [str(i + 1) for i in range(10)]
    assert all(task.reward(e, f"Answer: {e.answer}") == 1.0 for e in val)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "hi", "answer": 1', "bad.jsonl:2: malformed JSON"),
        ("[1, 2]", "bad.jsonl:2: expected a JSON object"),
        ('{"answer": 1}', "bad.jsonl row 1: column 'prompt' \\(the prompt_column\\) is empty"),
        ('{"prompt": "hi"}', "bad.jsonl row 1: column 'answer' \\(the answer_column\\) is empty"),
        ('{"prompt": 5, "answer": 1}', "bad.jsonl row 1: column 'prompt' must be a text"),
        ('{"prompt": "  ", "answer": 1}', "bad.jsonl row 1: the prompt is empty"),
    ],
)
def test_jsonl_errors_name_file_row_and_column(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", ['{"prompt": "ok", "answer": 1}', line])
    with pytest.raises(ValueError, match=message):
        DatasetTask(str(path)).examples("train")


def test_jsonl_skip_empty_prompts_is_counted(tmp_path):
    path = _write(tmp_path / "e.jsonl", ['{"prompt": "", "answer": 1}', '{"prompt": "x", "answer": 2}'])
    task = DatasetTask(str(path), on_empty_prompt="skip")
    assert [e.prompt for e in task.examples("train")] == ["x"]
    assert task.skipped_empty == 1


def test_jsonl_id_column_and_duplicates(tmp_path):
    path = _write(
        tmp_path / "i.jsonl", ['{"id": "a", "prompt": "x", "answer": 1}', '{"prompt": "y", "answer": 2}']
    )
    with pytest.raises(ValueError, match="i.jsonl row 1: column 'id' \\(the id_column\\) is empty"):
        DatasetTask(str(path), id_column="id").examples("train")
    path = _write(
        tmp_path / "j.jsonl",
        ['{"id": "a", "prompt": "x", "answer": 1}', '{"id": "a", "prompt": "y", "answer": 2}'],
    )
    with pytest.raises(ValueError, match="j.jsonl row 1: duplicate id 'a'"):
        DatasetTask(str(path), id_column="id").examples("train")


def test_jsonl_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        DatasetTask(str(tmp_path / "nope.jsonl")).examples("train")
    with pytest.raises(ValueError, match="val_split or a held-out val_fraction"):
        DatasetTask({"train": "x.jsonl", "validation": "y.jsonl"}, val_split="validation", val_fraction=0.1)
    with pytest.raises(ValueError, match="on_empty_prompt"):
        DatasetTask("x.jsonl", on_empty_prompt="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- configs


TASK_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "task").glob("*.yaml"))


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_task_configs_instantiate(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # jsonl_example.yaml uses a path relative to the repository root
    cfg = yaml.safe_load((ROOT / "configs" / "task" / f"{name}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--task", type=Task)
    task = parser.instantiate(parser.parse_object({"task": cfg["data"]["init_args"]["task"]})).task
    assert isinstance(task, Task)
    train = task.examples("train")
    assert train and all(ex.prompt for ex in train)
    if name == "jsonl_example":
        assert len(train) == 8 and len(task.examples("val")) == 2
        assert all(task.reward(ex, f"Answer: {ex.answer}") == 1.0 for ex in train + task.examples("val"))
