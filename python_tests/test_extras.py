"""Optional dependencies: with one hidden (None in sys.modules, as if not installed), each optional part
fails with one message naming the extra that installs it, before any work; the package metadata
declares those extras (setup.py reads them from requirements-dev.txt)."""

import importlib.metadata
import re
import sys

import pytest
import torch

from model_helpers import save_tiny_llava
from v2drop_kernels import demo
from v2drop_kernels.extras import EXTRAS, MissingExtra, require
from v2drop_kernels.models import random_llava, random_qwen_vl, tiny_config, tiny_qwen_config


@pytest.fixture
def hide(monkeypatch):
    """hide(name): the module and its submodules import as if the distribution were not installed."""
    def hide(name):
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)
    return hide


def message(extra):
    return re.escape(f"pip install 'v2drop_kernels[{extra}]'")


def test_require_names_the_extra_and_leaves_other_import_errors_alone(hide):
    with pytest.raises(ModuleNotFoundError) as err:  # a module missing inside an installed package: as it is
        require("transformers.no_such_module", "a purpose")
    assert not isinstance(err.value, MissingExtra)
    hide("transformers")
    for module in ("transformers", "transformers.models"):
        with pytest.raises(MissingExtra, match=r"^a purpose needs transformers, which is not installed: " + message("transformers")):
            require(module, "a purpose")


@pytest.mark.parametrize("build", [lambda: random_llava(tiny_config(layers=2, hidden=32)),
                                   lambda: random_qwen_vl(tiny_qwen_config(layers=2))], ids=["llava", "qwen-vl"])
def test_models_without_transformers(hide, build):
    hide("transformers")
    with pytest.raises(MissingExtra, match=message("transformers")):
        build()


def test_loading_without_safetensors(hide, tmp_path):
    folder = save_tiny_llava(tmp_path / "llava")
    hide("safetensors")
    with pytest.raises(MissingExtra, match="loading checkpoint weights needs safetensors.*" + message("transformers")):
        from v2drop_kernels.models import load_model

        load_model(folder)


def test_progress_bar_without_tqdm(hide):
    model = random_llava(tiny_config(layers=2, hidden=32, image_size=56))
    ids = torch.cat([torch.tensor([1, 2]), torch.full((model.cfg.tokens_per_image,), model.cfg.image_token_id)])
    hide("tqdm")
    with pytest.raises(MissingExtra, match=r"generate\(progress=True\) needs tqdm.*" + message("demo")):
        model.generate([ids], torch.randn(1, 3, 56, 56), max_new_tokens=2, progress=True)


@pytest.mark.parametrize("module, argv", [("PIL", []), ("matplotlib", ["--heatmap", "out.png"])])
def test_demo_names_the_demo_extra_before_any_work(hide, monkeypatch, tmp_path, capsys, module, argv):
    monkeypatch.chdir(tmp_path)
    hide(module)
    monkeypatch.setattr(demo, "random_llava", lambda *a, **k: pytest.fail("the demo built a model first"))
    with pytest.raises(MissingExtra, match=message("demo")):
        demo.main(argv)
    monkeypatch.setattr(sys, "argv", ["v2drop-demo", *argv])
    with pytest.raises(SystemExit, match=r"^v2drop-demo: .* needs .*" + message("demo")):  # the console script: no traceback
        demo.cli()


def test_vllm_plugin_without_vllm(hide):
    from v2drop_kernels.integrations import vllm as plugin

    hide("vllm")
    with pytest.raises(MissingExtra, match="the vLLM plugin needs vllm.*" + message("vllm")):
        plugin.register()


def test_the_metadata_declares_every_extra_the_messages_name():
    meta = importlib.metadata.metadata("v2drop_kernels")
    declared = set(meta.get_all("Provides-Extra"))
    assert {"transformers", "demo", "vllm", "dev"} <= declared
    requires = meta.get_all("Requires-Dist")
    for dist, extra in EXTRAS.values():
        if dist == "numpy":  # brought by matplotlib
            continue
        assert any(r.startswith(dist) and f'extra == "{extra}"' in r for r in requires), (dist, extra, requires)
    assert meta["Version"] == __import__("v2drop_kernels").__version__
    assert any(ep.name == "v2drop-demo" for ep in importlib.metadata.entry_points(group="console_scripts"))
