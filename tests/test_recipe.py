"""How a recipe is chosen: files over names, contradictions warned about, and shown to users."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedsvc import Embedder
from embedsvc.models.profiles import select_profile
from tests import families
from tests.server_utils import ServerProcess
from tests.test_families import assert_matches


@pytest.mark.parametrize(
    ("hub_name", "family"),
    [
        ("intfloat/e5-mistral-7b-instruct", "e5-mistral"),
        ("Salesforce/SFR-Embedding-Mistral", "e5-mistral"),
        ("Salesforce/SFR-Embedding-2_R", "e5-mistral"),
        ("Linq-AI-Research/Linq-Embed-Mistral", "e5-mistral"),
        ("Qwen/Qwen3-Embedding-0.6B", "qwen3-embedding"),
        ("Alibaba-NLP/gte-Qwen2-7B-instruct", "gte-qwen2"),
        ("BAAI/bge-en-icl", "bge-icl"),
        ("GritLM/GritLM-7B", "gritlm"),
        ("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised", "llm2vec"),
        ("intfloat/multilingual-e5-large", "e5"),
        ("intfloat/e5-base-v2", "e5"),
        ("intfloat/multilingual-e5-large-instruct", "e5-instruct"),
        ("BAAI/bge-base-en-v1.5", "bge"),
        ("Snowflake/snowflake-arctic-embed-m-v1.5", "arctic-embed"),
        ("Snowflake/snowflake-arctic-embed-l-v2.0", "arctic-embed-v2"),
        ("nomic-ai/modernbert-embed-base", "nomic"),
        ("some-org/some-decoder", "decoder"),
    ],
)
def test_names_only_pick_a_family_for_what_files_do_not_say(hub_name, family):
    assert select_profile(hub_name, is_decoder=True).profile.name == family


def test_files_win_over_a_matching_name(tmp_path):
    """A folder named like bge but whose ST files say mean pooling is pooled by mean."""
    folder = families.build_bert_layout(tmp_path / "BAAI" / "bge-base-en-v1.5", pooling="mean")
    emb = Embedder.from_pretrained(folder)
    assert emb.settings.profile == "bge"
    assert emb.settings.pooling == "mean" and emb.settings.sources["pooling"] == "1_Pooling/config.json"


def test_a_declared_bos_that_tokenizer_json_drops_is_prepended(tmp_path):
    folder = tmp_path / "bos-dropped"
    families.bytelevel_tokenizer(
        folder, specials=["<s>", "</s>"], single=None, bos_token="<s>", eos_token="</s>", add_bos_token=True
    )
    families._mistral(folder, seed=3)
    emb = Embedder.from_pretrained(folder)
    assert emb.settings.prepend_bos and any("add_bos_token" in w for w in emb.settings.warnings)
    tok = AutoTokenizer.from_pretrained(folder)
    text = "the dog runs"
    (encoded,) = emb.prepare([text])
    assert encoded.ids == [tok.bos_token_id, *tok(text)["input_ids"]]
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        last = model(input_ids=torch.tensor([encoded.ids])).last_hidden_state[0, -1]
    assert_matches(emb.embed([text]), F.normalize(last, dim=0)[None])


def test_causal_sliding_window_shorter_than_the_input(tmp_path):
    """A plain decoder with a 5-token window: every batching mode equals transformers' eager path."""
    folder = tmp_path / "windowed"
    families.llama_tokenizer(folder)
    families._mistral(folder, seed=4, sliding_window=5)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    texts = ["a", "the dog runs over the road to the city", "children read books at school " * 3]
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            rows.append(model(input_ids=ids).last_hidden_state[0, -1])
    ref = F.normalize(torch.stack(rows), dim=-1)
    for options in ({"batching": "padded"}, {"batching": "packed"}, {"deterministic": True}):
        assert_matches(Embedder.from_pretrained(folder, **options).embed(texts), ref)


def test_recipe_names_every_source(tmp_path):
    folder = families.build_e5_mistral_layout(tmp_path / "acme" / "ft")
    recipe = Embedder.from_pretrained(folder).recipe
    append_eos = {"value": True, "source": "tokenizer_config.json add_eos_token=true"}
    assert recipe.settings["append_eos"] == append_eos
    assert recipe.settings["pooling"]["source"] == "1_Pooling/config.json"
    assert recipe.settings["instruction_template"]["source"].startswith("config_sentence_transformers.json")
    query = recipe.samples["query"]
    assert query["tokens"][0] == "<s>" and query["tokens"][-1] == "</s>"
    assert query["pooled"] == [0, len(query["tokens"])]
    json.dumps(recipe.to_dict())  # serialisable for --json and logs


def test_inspect_command_shows_recipe_warnings_and_tokens(tmp_path):
    folder = families.build_gte_qwen2_layout(tmp_path / "acme" / "gq")
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "inspect", str(folder), "--query", "summit define"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "family      gte-qwen2  [detected from config.json]" in text
    assert "WARNING: config.json sets is_causal=false" in text
    assert "append_eos            True  <- tokenizer_config.json add_eos_token=true" in text
    assert "'<|endoftext|>'" in text and "summit" in text
    as_json = subprocess.run(
        [sys.executable, "-m", "embedsvc", "inspect", str(folder), "--json"]
        + ["--set", "attention=bidirectional"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    data = json.loads(as_json.stdout)
    assert data["settings"]["attention"] == {"value": "bidirectional", "source": "option attention"}


def test_inspect_refuses_custom_code_with_a_clear_message(tmp_path):
    folder = families.build_custom_code_layout(tmp_path / "own")
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "inspect", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 9 and "Traceback" not in out.stderr  # 9: the model does not load
    assert "--trust-remote-code" in out.stderr


@pytest.mark.slow
def test_list_models_reports_the_recipe(tmp_path):
    from embedsvc.client import EmbedClient

    folder = families.build_e5_mistral_layout(tmp_path / "acme" / "retriever")
    with (
        ServerProcess("--model", f"r={folder}", log_path=tmp_path / "server.log") as server,
        EmbedClient(server.target) as client,
    ):
        (info,) = client.list_models()
        vectors = client.embed(["summit define"], input_type="document")
    assert info.append_eos and info.attention == "causal"
    assert info.recipe_sources["append_eos"] == "tokenizer_config.json add_eos_token=true"
    assert any("add_eos_token" in w for w in info.recipe_warnings)
    local = Embedder.from_pretrained(folder).embed(["summit define"], input_type="document")
    np.testing.assert_allclose(vectors, local, atol=1e-5)
    log = (tmp_path / "server.log").read_text()
    assert "add_eos_token=true" in log  # the warning is logged once at load
