"""Safety: nothing evaluates model output, remote code stays off by default, servers bind loopback by default."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = [ROOT / "epr_lightning", ROOT / "callbacks", ROOT / "tools"]
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def dangerous_calls(source: str, filename: str = "<src>") -> list[str]:
    """``file:line name`` for calls of the builtins eval/exec/compile/__import__ (also as ``builtins.X``) and for
    ``trust_remote_code=True`` literals. ``model.eval()`` and ``re.compile()`` are method calls and pass."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            hits.append(f"{filename}:{node.lineno} {func.id}")
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in FORBIDDEN_CALLS
            and isinstance(func.value, ast.Name)
            and func.value.id in ("builtins", "__builtins__")
        ):
            hits.append(f"{filename}:{node.lineno} builtins.{func.attr}")
        for kw in node.keywords:
            if (
                kw.arg == "trust_remote_code"
                and isinstance(kw.value, ast.Constant)
                and kw.value.value is True
            ):
                hits.append(f"{filename}:{node.lineno} trust_remote_code=True")
    return hits


def package_files() -> list[Path]:
    files = [p for d in PACKAGE_DIRS if d.is_dir() for p in sorted(d.rglob("*.py"))]
    assert len(files) > 20, files  # the scan really covers the package
    return files


def test_scanner_flags_what_it_should_and_only_that() -> None:
    bad = "eval(x)\nexec('1')\nbuiltins.eval(y)\n__import__('os')\nf(trust_remote_code=True)\ncompile(s, 'f', 'exec')\n"
    assert [h.split(" ")[1] for h in dangerous_calls(bad)] == [
        "eval", "exec", "builtins.eval", "__import__", "trust_remote_code=True", "compile",
    ]  # fmt: skip
    fine = "model.eval()\nre.compile('x')\nf(trust_remote_code=flag)\nself.exec_mode = 1\n"
    assert dangerous_calls(fine) == []


def test_no_eval_exec_or_remote_code_in_the_package() -> None:
    hits = [
        h for path in package_files() for h in dangerous_calls(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert hits == []


def test_rewards_never_execute_model_output(tmp_path: Path) -> None:
    from epr_lightning.tasks import ArithmeticTask, CountdownTask
    from epr_lightning.tasks.base import Example

    marker = tmp_path / "pwned"
    payloads = [
        f"Answer: __import__('os').system('touch {marker}')",
        f"Answer: \\boxed{{open('{marker}', 'w').write('x')}}",
        "Answer: (lambda: 1)()",
        "Answer: 9**9**9**9",  # must not hang or blow up memory
    ]
    countdown = CountdownTask(num_train=1, num_val=0)
    arithmetic = ArithmeticTask(num_train=1, num_val=0)
    for task in (countdown, arithmetic):
        example: Example = task.examples("train")[0]
        for text in payloads:
            assert task.reward(example, text) == 0.0
    assert not marker.exists()
    example = arithmetic.examples("train")[0]  # control: a plain correct answer still scores
    assert arithmetic.reward(example, f"Answer: {example.answer}") == 1.0


def test_trust_remote_code_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from epr_lightning.models import HFModel
    from epr_lightning.tiny import save_tiny

    assert inspect.signature(HFModel).parameters["trust_remote_code"].default is False
    seen: list[dict] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    HFModel(str(save_tiny(tmp_path / "tiny", hidden_size=16, intermediate_size=32, num_layers=1))).build()
    assert len(seen) == 2
    assert all(kw["trust_remote_code"] is False and kw["local_files_only"] is True for kw in seen)


def test_servers_and_engines_default_to_loopback() -> None:
    import torch

    from epr_lightning.rollout.sglang import SGLangEngine
    from epr_lightning.rollout.sglang_server import SGLangServerEngine
    from epr_lightning.testing.fake_sglang import FakeSGLangServer

    loopback = {"127.0.0.1", "localhost", "::1"}
    assert inspect.signature(FakeSGLangServer).parameters["host"].default in loopback
    with pytest.raises(ValueError, match="loopback"):
        FakeSGLangServer(host="0.0.0.0")

    client = SGLangServerEngine(health_check=False)
    assert all(url.startswith("http://127.0.0.1:") for url in client.urls)
    assert client_default("nccl_master_addr", SGLangServerEngine) in loopback

    # the in-process SGLang engine: no host given means sglang's own default (127.0.0.1), never a wildcard
    kwargs = SGLangEngine(model_path="/models/x").engine_kwargs(torch.nn.Linear(1, 1), rank=0)
    assert kwargs.get("host", "127.0.0.1") in loopback
    assert kwargs.get("trust_remote_code", False) is False


def client_default(name: str, cls: type) -> object:
    return inspect.signature(cls).parameters[name].default
