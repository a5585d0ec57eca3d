"""A third-party adapter installed as a distribution with a `cmc` entry point, used through the CLI."""

import sys
import textwrap

import pytest

from cmc_cli.errors import AdapterError
from cmc_cli.plugins import get_adapter, registered_adapters, reset_plugin_manager
from cmc_cli.tokenmaps import TokenMap

PLUGIN = '''
from cmc_cli.adapters.base import Adapter
from cmc_cli.hookspecs import hookimpl
from cmc_cli.vocab import PLAIN, build_vocab


class WordListAdapter(Adapter):
    """A vocabulary as a text file: one token per line, `<eos>` is the end-of-sequence token."""

    name = "wordlist"
    description = "plain word lists (*.vocab)"
    convention = PLAIN

    def matches(self, ref):
        return ref.path.suffix == ".vocab"

    def load_tokenizer(self, ref):
        return ref.path.read_text(encoding="utf-8").splitlines()

    def token_surfaces(self, tokenizer, name=""):
        special = {i: ["eos"] for i, t in enumerate(tokenizer) if t == "<eos>"}
        return build_vocab(name, tokenizer, PLAIN, special=special)


@hookimpl
def cmc_register_adapters(register):
    register(WordListAdapter())
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "cmc_wordlist.py").write_text(PLUGIN)
    dist = site / "cmc_wordlist-1.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cmc-wordlist\nVersion: 1.2.0\n")
    (dist / "entry_points.txt").write_text("[cmc]\nwordlist = cmc_wordlist\n")
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    yield
    sys.modules.pop("cmc_wordlist", None)
    reset_plugin_manager()


def test_plugin_is_listed_with_its_distribution(cli, installed_plugin):
    r = cli("adapters")
    assert r.exit_code == 0, r.output
    assert "wordlist" in r.output and "cmc-wordlist 1.2.0" in r.output
    assert list(registered_adapters())[0] == "wordlist"  # plugins are tried before built-ins


def test_plugin_adapter_used_end_to_end(cli, workdir, installed_plugin, tiny_tokenizers):
    words = workdir / "words.vocab"
    words.write_text(textwrap.dedent("""\
        <eos>
        ▁the
        ▁lighthouse
        ▁xylophone
        ▁ultimatel
        """))
    r = cli("map-vocab", tiny_tokenizers["spm"], words, "--show")
    assert r.exit_code == 0, r.output
    tm = TokenMap.load(workdir / "tokenmaps" / "tiny-spm__words.safetensors")
    from cmc_cli.engine.maps import load_vocab
    from cmc_cli.refs import resolve

    delta = load_vocab(resolve(str(tiny_tokenizers["spm"])))
    got = [delta.pieces[j] if j >= 0 else None for j in tm.index]
    assert got[0] == "</s>" and got[1] == "▁the"
    assert tm.meta["user"]["convention"] == "plain"


def test_duplicate_adapter_names_are_refused(installed_plugin):
    from cmc_cli.adapters.hf import GenericHFAdapter
    from cmc_cli.hookspecs import hookimpl
    from cmc_cli.plugins import get_plugin_manager

    class Clash:
        @hookimpl
        def cmc_register_adapters(self, register):
            register(GenericHFAdapter())

    get_plugin_manager().register(Clash(), name="clash")
    with pytest.raises(AdapterError, match="two adapters are named 'hf'"):
        registered_adapters()


def test_not_an_adapter_is_refused(installed_plugin):
    from cmc_cli.hookspecs import hookimpl
    from cmc_cli.plugins import get_plugin_manager

    class Broken:
        @hookimpl
        def cmc_register_adapters(self, register):
            register(object())

    get_plugin_manager().register(Broken(), name="broken")
    with pytest.raises(AdapterError, match="not a named cmc Adapter"):
        get_adapter("hf")


def test_an_adapter_missing_a_method_is_refused_at_registration(installed_plugin):
    from cmc_cli.adapters.base import Adapter
    from cmc_cli.hookspecs import hookimpl
    from cmc_cli.plugins import get_plugin_manager

    class Half(Adapter):
        name = "half"

        def load_model(self, ref, dtype=None, device="cpu"):
            return None

    class Plugin:
        @hookimpl
        def cmc_register_adapters(self, register):
            register(Half())

    get_plugin_manager().register(Plugin(), name="half-plugin")
    with pytest.raises(AdapterError, match="adapter 'half' .* does not implement load_tokenizer, token_surfaces"):
        registered_adapters()


def test_every_hook_is_documented():
    from pathlib import Path

    from cmc_cli import hookspecs

    doc = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("cmc_")]
    assert hooks
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name
        assert name in doc, f"{name} missing from docs/plugins.md"


def test_family_facts_are_declared_by_the_adapters_and_read_by_the_shared_code():
    from cmc_cli.adapters.base import HFAdapter, family_facts_digest, family_filler, family_marker_roles
    from cmc_cli.hookspecs import hookimpl
    from cmc_cli.plugins import get_plugin_manager
    from cmc_cli.adapters.gemma import GemmaAdapter
    from cmc_cli.adapters.llama import LlamaAdapter
    from cmc_cli.adapters.qwen import QwenAdapter

    assert GemmaAdapter.marker_roles["<start_of_turn>"] == "turn_start" and "<unused\\d+>" in GemmaAdapter.filler_patterns
    assert LlamaAdapter.marker_roles["<|eot_id|>"] == "turn_end" and QwenAdapter.marker_roles["<|im_start|>"] == "turn_start"
    roles = family_marker_roles()
    assert {roles[k] for k in ("<start_of_turn>", "<|im_end|>", "<|start_header_id|>", "[INST]", "</s>")} == {
        "turn_start", "turn_end", "header_start", "inst_start", "eos"}
    assert family_filler().match("<unused17>") and family_filler().match("<|reserved_special_token_3|>")
    assert not family_filler().match("<unused>")

    class ToyAdapter(HFAdapter):  # a subclass nobody registers changes nothing
        name = "toy"
        marker_roles = {"<|toy_turn|>": "turn_start"}
        filler_patterns = (r"<toy_pad_\d+>",)

    before = family_facts_digest()
    assert "<|toy_turn|>" not in family_marker_roles() and not family_filler().match("<toy_pad_4>")

    class Plugin:  # registered by a plugin, its facts are read by every vocabulary (and key the vocabulary cache)
        @hookimpl
        def cmc_register_adapters(self, register):
            register(ToyAdapter())

    get_plugin_manager().register(Plugin(), name="toy-plugin")
    assert "toy" in registered_adapters()
    assert family_marker_roles()["<|toy_turn|>"] == "turn_start" and family_filler().match("<toy_pad_4>")
    assert family_facts_digest() != before
    reset_plugin_manager()  # forgetting the plugin forgets its facts
    assert "<|toy_turn|>" not in family_marker_roles() and family_facts_digest() == before
